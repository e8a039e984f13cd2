//! `UdpNode` and its `Application`, sans-IO: nodes in memory whose
//! datagrams go through the real codec and security layer, hosts whose
//! stores are `MemStore`s. A batch made durable later holds back what
//! depends on it; a failed one stops the node acknowledging; snapshots leave
//! in datagram-sized chunks read from the host's store; entries the memory
//! log lacks are fetched from it, and a fetch that fails at once does not
//! loop.

mod common;

use coracle::{
    Batch, CachedLog, Config, Entry, EntryKind, Index, LogStorage, MemStore, Node, NodeId, Output,
    Role, SyncToken, VecLog,
};
use coracle_udp::codec::{max_snapshot_chunk_bytes, mtu_config, Link, DEFAULT_ENTRIES};
use coracle_udp::node::{Application, Completion, UdpNode};
use coracle_udp::{ClusterKey, Datagram, SendCounter, DEFAULT_MTU};

const CLUSTER: u64 = 0x5EED;

/// A host: its store, how it completes batches, what it applied.
struct Host {
    store: MemStore,
    mode: Completion,
    /// Tokens of batches taken with `Completion::Later`.
    held: Vec<SyncToken>,
    /// Fetches answered from the store (`Completion::Now`) or failed.
    serve_fetches: bool,
    /// Fetches answered later: the ranges asked.
    fetch_later: Option<Vec<(Index, Index)>>,
    fetches: usize,
    chunks: Vec<usize>,
    applied: Vec<(Index, Vec<u8>)>,
    restored: Vec<Index>,
}

impl Host {
    fn new() -> Self {
        Self {
            store: MemStore::new(),
            mode: Completion::Now,
            held: Vec::new(),
            serve_fetches: true,
            fetch_later: None,
            fetches: 0,
            chunks: Vec::new(),
            applied: Vec::new(),
            restored: Vec::new(),
        }
    }
}

impl Application for Host {
    fn persist(&mut self, batch: &Batch<'_>) -> Completion {
        if self.mode != Completion::Failed {
            self.store.persist(batch);
        }
        if self.mode == Completion::Later {
            self.held.push(batch.token);
        }
        self.mode
    }

    fn fetch(&mut self, from: Index, to: Index, hand_in: &mut dyn FnMut(Entry<'_>)) -> Completion {
        self.fetches += 1;
        if let Some(asked) = &mut self.fetch_later {
            asked.push((from, to));
            return Completion::Later;
        }
        if !self.serve_fetches {
            return Completion::Failed;
        }
        self.store.fetch(from, to).for_each(hand_in);
        Completion::Now
    }

    fn snapshot_chunk(
        &mut self,
        index: Index,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<(usize, bool)> {
        let (bytes, done) = self.store.snapshot_chunk(index, offset, buf.len())?;
        buf[..bytes.len()].copy_from_slice(bytes);
        self.chunks.push(bytes.len());
        Some((bytes.len(), done))
    }

    fn output(&mut self, output: Output<'_>) {
        match output {
            Output::Apply(e) if e.kind == EntryKind::Command => {
                self.applied.push((e.index, e.data.to_vec()));
            }
            Output::RestoreSnapshot { index, .. } => {
                self.restored.push(index);
                self.applied.clear();
            }
            _ => {}
        }
    }

    fn persist_counter(&mut self, _mark: u64) -> bool {
        true
    }
}

fn link(id: NodeId) -> Link<6> {
    Link::new(
        &ClusterKey::from_bytes([0x33; 32]),
        CLUSTER,
        id,
        SendCounter::resume(None, 1 << 20),
    )
}

fn config(id: NodeId) -> Config {
    mtu_config::<DEFAULT_MTU, DEFAULT_ENTRIES>(Config::new(id, id * 31))
}

/// Nodes in memory; `cut` nodes neither send nor receive.
struct Net<S: LogStorage> {
    nodes: Vec<(UdpNode<S>, Host)>,
    cut: Vec<NodeId>,
    now: u64,
}

impl<S: LogStorage> Net<S> {
    fn node(&mut self, id: NodeId) -> &mut (UdpNode<S>, Host) {
        self.nodes
            .iter_mut()
            .find(|(n, _)| n.node().id() == id)
            .expect("a member")
    }

    /// One tick, then every datagram delivered until none is left.
    fn tick(&mut self) {
        self.now += 1;
        for (udp, _) in &mut self.nodes {
            udp.advance_to(self.now);
        }
        self.settle();
    }

    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut mail: Vec<(NodeId, Vec<u8>)> = Vec::new();
            let mut out: Datagram = Datagram::new();
            for (udp, host) in &mut self.nodes {
                let from = udp.node().id();
                while let Some(to) = udp.poll_transmit(host, &mut out) {
                    assert!(out.len() <= DEFAULT_MTU);
                    if !self.cut.contains(&from) && !self.cut.contains(&to) {
                        mail.push((to, out.to_vec()));
                    }
                }
            }
            if mail.is_empty() {
                return;
            }
            for (to, mut bytes) in mail {
                let (udp, _) = self.node(to);
                udp.receive(&mut bytes).expect("authentic");
            }
        }
        panic!("the network does not settle");
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .map(|(n, _)| n.node())
            .find(|n| n.role() == Role::Leader)
            .map(Node::id)
    }

    fn elect(&mut self) -> NodeId {
        for _ in 0..200 {
            self.tick();
            if let Some(l) = self.leader() {
                return l;
            }
        }
        panic!("no leader");
    }
}

fn cluster(ids: &[NodeId]) -> Net<VecLog> {
    let nodes = ids
        .iter()
        .map(|&id| {
            let node = Node::new(config(id), VecLog::new(), ids).expect("config");
            (UdpNode::new(node, link(id)).expect("room"), Host::new())
        })
        .collect();
    Net {
        nodes,
        cut: Vec::new(),
        now: 0,
    }
}

/// Three nodes; a follower whose host completes batches as `mode` says;
/// a proposal, a few ticks. Returns the network, the leader, that follower
/// and the proposal's index.
fn propose_with_a_follower(mode: Completion, ticks: u64) -> (Net<VecLog>, NodeId, NodeId, Index) {
    let mut net = cluster(&[1, 2, 3]);
    let leader = net.elect();
    let follower = if leader == 2 { 3 } else { 2 };
    net.node(follower).1.mode = mode;
    let p = net.node(leader).0.node_mut().propose(b"x").expect("leader");
    net.run(ticks);
    (net, leader, follower, p.index)
}

#[test]
fn a_batch_made_durable_later_holds_back_the_acknowledgement_that_depends_on_it() {
    let (mut net, leader, slow, index) = propose_with_a_follower(Completion::Later, 3);
    // Committed with the other follower; the slow one has not acknowledged.
    assert!(net.node(leader).0.node().commit_index() >= index);
    let progress = net.node(leader).0.node().progress(slow).expect("a peer");
    assert!(progress.match_index < index, "{progress:?}");
    let (udp, host) = net.node(slow);
    assert!(udp.node().durable_index() < index);
    let token = *host.held.last().expect("a batch taken for later");
    assert!(
        host.store.entry(index).is_some(),
        "written, not yet durable"
    );
    udp.persisted(token);
    net.settle();
    let progress = net.node(leader).0.node().progress(slow).expect("a peer");
    assert!(progress.match_index >= index, "{progress:?}");
}

#[test]
fn a_failed_batch_stops_the_node_acknowledging() {
    let (mut net, leader, broken, index) = propose_with_a_follower(Completion::Failed, 5);
    assert!(net.node(leader).0.node().commit_index() >= index);
    let (udp, _) = net.node(broken);
    assert!(udp.node().storage_failed());
    assert_eq!(udp.counters().persist_failures, 1);
    let progress = net.node(leader).0.node().progress(broken).expect("a peer");
    assert!(progress.match_index < index);
}

#[test]
fn a_snapshot_leaves_in_datagram_sized_chunks_read_from_the_store() {
    let mut net = cluster(&[1, 2, 3]);
    let leader = net.elect();
    let away = if leader == 3 { 2 } else { 3 };
    net.cut.push(away);
    for i in 0..20u8 {
        net.node(leader)
            .0
            .node_mut()
            .propose(&[i; 150])
            .expect("leader");
        net.tick();
    }
    // Every node up snapshots its state (3000 bytes: 4 datagrams at least)
    // and compacts its log.
    let state = vec![0xABu8; 3000];
    for (udp, host) in &mut net.nodes {
        if udp.node().id() == away {
            continue;
        }
        let applied = udp.node().applied_index();
        host.store.save_taken(applied, state.clone());
        udp.node_mut().snapshot_taken(applied).expect("applied");
    }
    net.settle();
    net.cut.clear();
    net.run(30);
    let chunk = max_snapshot_chunk_bytes(DEFAULT_MTU);
    let served = net.node(leader).1.chunks.clone();
    assert!(served.len() >= 4, "{served:?}");
    assert!(served.iter().all(|&len| len <= chunk), "{served:?}");
    let (udp, host) = net.node(away);
    let (meta, bytes) = host.store.snapshot.clone().expect("installed");
    assert_eq!(bytes, state);
    assert_eq!(host.restored, [meta.index]);
    assert!(udp.node().commit_index() >= meta.index);
    assert!(
        udp.node().log().first_index() > 1,
        "restarted after the snapshot"
    );
}

/// A node of a cluster of one restarted on a memory log that holds only the
/// terms of its entries (their data stays in the store).
fn restarted_without_data(serve_fetches: bool) -> (UdpNode<CachedLog, 6>, Host) {
    let mut host = Host::new();
    let mut first: Node<VecLog> = Node::new(config(1), VecLog::new(), &[1]).expect("config");
    first.campaign();
    for i in 0..10u8 {
        while let Some(out) = first.poll_output() {
            if let Output::Persist(batch) = out {
                let token = batch.token;
                host.store.persist(&batch.batch());
                first.persisted(token);
            }
        }
        if first.role() == Role::Leader {
            first.propose(&[i; 40]).expect("leader");
        }
    }
    while let Some(out) = first.poll_output() {
        if let Output::Persist(batch) = out {
            let token = batch.token;
            host.store.persist(&batch.batch());
            first.persisted(token);
        }
    }
    let mut log = CachedLog::new(64);
    log.set_hard_state(host.store.hard_state);
    for e in host.store.entries.iter().map(|e| e.as_entry()) {
        if e.kind == EntryKind::Membership {
            log.append(&e).expect("append");
        } else {
            log.append_without_data(e.index, e.term, e.kind)
                .expect("terms only");
        }
    }
    host.serve_fetches = serve_fetches;
    let node = Node::new(config(1), log, &[1]).expect("config");
    (UdpNode::new(node, link(1)).expect("room"), host)
}

#[test]
fn entries_missing_from_memory_are_fetched_from_the_store() {
    let (mut udp, mut host) = restarted_without_data(true);
    let last = host.store.last_index();
    let mut out: Datagram = Datagram::new();
    for now in 1..200 {
        udp.advance_to(now);
        while udp.poll_transmit(&mut host, &mut out).is_some() {}
    }
    assert!(host.fetches > 0);
    assert_eq!(
        udp.node().applied_index(),
        last + 1,
        "every entry and the new no-op"
    );
    let commands: Vec<Vec<u8>> = host.applied.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(commands, (0..10u8).map(|i| vec![i; 40]).collect::<Vec<_>>());
    assert_eq!(udp.counters().fetch_failures, 0);
}

#[test]
fn a_fetch_that_fails_at_once_ends_the_drain_instead_of_looping() {
    let (mut udp, mut host) = restarted_without_data(false);
    let mut out: Datagram = Datagram::new();
    for now in 1..200 {
        udp.advance_to(now);
        while udp.poll_transmit(&mut host, &mut out).is_some() {}
    }
    // One failed fetch per drain at most, and nothing applied without data.
    assert!(host.fetches > 0 && host.fetches < 400, "{}", host.fetches);
    assert_eq!(udp.counters().fetch_failures as usize, host.fetches);
    assert_eq!(udp.node().applied_index(), 0);
    assert!(host.applied.is_empty());
    // Served again, it goes on.
    host.serve_fetches = true;
    udp.advance_to(200);
    while udp.poll_transmit(&mut host, &mut out).is_some() {}
    assert_eq!(host.applied.len(), 10);
}

#[test]
fn a_fetch_answered_later_is_handed_in_with_fetched() {
    let (mut udp, mut host) = restarted_without_data(true);
    host.fetch_later = Some(Vec::new());
    let mut out: Datagram = Datagram::new();
    for now in 1..200 {
        udp.advance_to(now);
        while udp.poll_transmit(&mut host, &mut out).is_some() {}
    }
    // One fetch asked, none answered yet: nothing applied, nothing asked again.
    let asked = host.fetch_later.take().expect("later");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(udp.node().applied_index(), 0);
    let (from, to) = asked[0];
    udp.fetched(host.store.fetch(from, to));
    while udp.poll_transmit(&mut host, &mut out).is_some() {}
    assert_eq!(host.applied.len(), 10);
    assert_eq!(udp.counters().fetch_failures, 0);
}
