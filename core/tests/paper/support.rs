//! A small in-process cluster for the paper's rules: explicit message queue, links that can
//! be cut, syncs answered at once or held, crashes and restarts.
#![allow(dead_code)]

use coracle::{
    Config, Entry, EntryKind, HardState, Index, InstallSnapshot, LogStorage, MemStore, Message,
    Node, NodeId, Output, OwnedEntry, OwnedMessage, Proposal, Role, SyncToken, Term, VecLog,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub type TestNode = Node<VecLog>;

/// A message on its way.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub message: OwnedMessage,
}

pub struct Cluster {
    pub members: Vec<NodeId>,
    pub config: fn(NodeId) -> Config,
    pub nodes: BTreeMap<NodeId, TestNode>,
    /// What survives a crash: each node's store as of the last answered sync.
    pub durable: BTreeMap<NodeId, MemStore>,
    /// Each node's store with every batch written, durable or not (what it reads from).
    pub written: BTreeMap<NodeId, MemStore>,
    pub queue: VecDeque<Envelope>,
    pub applied: BTreeMap<NodeId, Vec<OwnedEntry>>,
    /// Snapshots each node was told to restore.
    pub restored: BTreeMap<NodeId, Vec<coracle::SnapshotMeta>>,
    /// Times each node asked for a snapshot.
    pub snapshots_needed: BTreeMap<NodeId, usize>,
    /// Reads released: (id, Some(index)) ready, (id, None) failed.
    pub read_outputs: BTreeMap<NodeId, Vec<(u64, Option<Index>)>>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose `Output::Sync` waits in `held_syncs` for [`Cluster::sync`]; the others
    /// are answered at once.
    pub manual_sync: BTreeSet<NodeId>,
    pub held_syncs: BTreeMap<NodeId, SyncToken>,
    /// Members a node was started with, when not the cluster's.
    pub bootstrap: BTreeMap<NodeId, Vec<NodeId>>,
}

pub fn default_config(id: NodeId) -> Config {
    Config::new(id, id * 7919)
}

pub fn log_with_terms(terms: &[Term], current_term: Term) -> VecLog {
    let mut log = VecLog::new();
    for (i, &t) in terms.iter().enumerate() {
        log.append(&Entry {
            index: i as Index + 1,
            term: t,
            kind: EntryKind::Command,
            data: &[i as u8],
        })
        .unwrap();
    }
    log.set_hard_state(HardState {
        current_term,
        voted_for: None,
    });
    log
}

/// The store that holds what `log` holds (a node built by hand starts from it).
pub fn store_of(log: &VecLog) -> MemStore {
    let mut store = MemStore::new();
    store.hard_state = log.hard_state();
    store.entries = log.entries().to_vec();
    store.compacted = (
        log.first_index() - 1,
        log.term(log.first_index() - 1).unwrap_or(0),
    );
    store
}

pub fn terms_of(log: &VecLog) -> Vec<Term> {
    log.entries().iter().map(|e| e.term).collect()
}

impl Cluster {
    pub fn new(ids: &[NodeId]) -> Self {
        Self::with(ids, default_config, |_| VecLog::new())
    }

    pub fn with(
        ids: &[NodeId],
        config: fn(NodeId) -> Config,
        log: impl Fn(NodeId) -> VecLog,
    ) -> Self {
        let mut c = Cluster {
            members: ids.to_vec(),
            config,
            nodes: BTreeMap::new(),
            durable: BTreeMap::new(),
            written: BTreeMap::new(),
            queue: VecDeque::new(),
            applied: BTreeMap::new(),
            read_outputs: BTreeMap::new(),
            restored: BTreeMap::new(),
            snapshots_needed: BTreeMap::new(),
            cut: BTreeSet::new(),
            manual_sync: BTreeSet::new(),
            held_syncs: BTreeMap::new(),
            bootstrap: BTreeMap::new(),
        };
        for &id in ids {
            let log = log(id);
            c.durable.insert(id, store_of(&log));
            c.written.insert(id, store_of(&log));
            let mut node = Node::new(config(id), log, ids).unwrap();
            // A state built by hand: no leader can have been heard from recently.
            node.skip_vote_guard();
            c.nodes.insert(id, node);
            c.applied.insert(id, Vec::new());
            c.read_outputs.insert(id, Vec::new());
        }
        c
    }

    /// Starts a new node `id` that knows the cluster as `bootstrap` (it joins once the
    /// leader adds it).
    pub fn join(&mut self, id: NodeId, bootstrap: &[NodeId]) {
        let log = VecLog::new();
        self.durable.insert(id, MemStore::new());
        self.written.insert(id, MemStore::new());
        self.nodes
            .insert(id, Node::new((self.config)(id), log, bootstrap).unwrap());
        self.applied.insert(id, Vec::new());
        self.read_outputs.insert(id, Vec::new());
        self.bootstrap.insert(id, bootstrap.to_vec());
        if !self.members.contains(&id) {
            self.members.push(id);
        }
    }

    pub fn node(&self, id: NodeId) -> &TestNode {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut TestNode {
        self.nodes.get_mut(&id).expect("node is up")
    }

    /// Drains one node's outputs: sends are queued (unless the link is cut), batches
    /// written and made durable (or held), applies recorded, snapshot chunks read from the
    /// node's store.
    pub fn drain(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let written = self.written.get_mut(&id).expect("a store");
        loop {
            let mut sync = None;
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Send { to, message } if !self.cut.contains(&(id, to)) => {
                        self.queue.push_back(Envelope {
                            from: id,
                            to,
                            message: OwnedMessage::from(&message),
                        });
                    }
                    Output::SendSnapshot {
                        to,
                        message,
                        max_len,
                    } if !self.cut.contains(&(id, to)) => {
                        let Some((data, done)) = written.snapshot_chunk(
                            message.last_included_index,
                            message.offset,
                            max_len,
                        ) else {
                            continue;
                        };
                        let chunk = InstallSnapshot {
                            data,
                            done,
                            ..message
                        };
                        self.queue.push_back(Envelope {
                            from: id,
                            to,
                            message: OwnedMessage::from(&Message::InstallSnapshot(chunk)),
                        });
                    }
                    Output::Persist(batch) => {
                        written.persist(&batch);
                        sync = Some(batch.token);
                    }
                    Output::Fetch { .. } => panic!("a VecLog never misses"),
                    Output::Apply(e) => self.applied.get_mut(&id).unwrap().push(e.into()),
                    Output::ReadReady { id: r, index } => self
                        .read_outputs
                        .get_mut(&id)
                        .unwrap()
                        .push((r, Some(index))),
                    Output::ReadFailed { id: r } => {
                        self.read_outputs.get_mut(&id).unwrap().push((r, None))
                    }
                    Output::RestoreSnapshot { index, .. } => {
                        let meta = node.log().snapshot_meta().expect("a kept snapshot");
                        assert_eq!(meta.index, index);
                        self.restored.entry(id).or_default().push(meta)
                    }
                    Output::SnapshotNeeded => *self.snapshots_needed.entry(id).or_default() += 1,
                    Output::Send { .. } | Output::SendSnapshot { .. } | Output::StateChanged(_) => {
                    }
                }
            }
            match sync {
                Some(t) if !self.manual_sync.contains(&id) => {
                    self.durable.insert(id, written.clone());
                    node.persisted(t);
                }
                Some(t) => {
                    self.held_syncs.insert(id, t);
                    break;
                }
                None => break,
            }
        }
    }

    /// Answers a held sync of node `id`.
    pub fn sync(&mut self, id: NodeId) {
        if let Some(t) = self.held_syncs.remove(&id) {
            let node = self.nodes.get_mut(&id).unwrap();
            self.durable.insert(id, self.written[&id].clone());
            node.persisted(t);
            self.drain(id);
        }
    }

    pub fn drain_all(&mut self) {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drain(id);
        }
    }

    /// Delivers one queued message (dropping it if its receiver is down or the link cut).
    pub fn deliver(&mut self, env: Envelope) {
        if self.cut.contains(&(env.from, env.to)) {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&env.to) {
            node.step(env.from, env.message.as_message());
            self.drain(env.to);
        }
    }

    /// Delivers messages until none is left.
    pub fn stabilize(&mut self) {
        self.drain_all();
        let mut budget = 100_000;
        while let Some(env) = self.queue.pop_front() {
            self.deliver(env);
            budget -= 1;
            assert!(budget > 0, "cluster does not stabilize");
        }
    }

    /// Takes the queued messages matching `pred` out of the queue.
    pub fn take(&mut self, pred: impl Fn(&Envelope) -> bool) -> Vec<Envelope> {
        let (taken, kept): (Vec<_>, Vec<_>) = self.queue.drain(..).partition(|e| pred(e));
        self.queue = kept.into();
        taken
    }

    pub fn tick(&mut self, id: NodeId, ticks: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.advance(ticks);
        }
        self.drain(id);
    }

    /// Ticks every live node, one tick at a time, delivering messages in between.
    pub fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            let ids: Vec<_> = self.nodes.keys().copied().collect();
            for id in ids {
                self.tick(id, 1);
            }
            self.stabilize();
        }
    }

    /// Makes `id` campaign and delivers everything; asserts it won.
    pub fn elect(&mut self, id: NodeId) {
        self.node_mut(id).campaign();
        self.stabilize();
        assert_eq!(self.node(id).role(), Role::Leader, "node {id} did not win");
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Proposal {
        let p = self.node_mut(id).propose(data).unwrap();
        self.drain(id);
        p
    }

    pub fn isolate(&mut self, id: NodeId) {
        for &other in &self.members {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes `id`: everything not synced is lost, queued messages to it too.
    pub fn crash(&mut self, id: NodeId) {
        self.nodes.remove(&id);
        self.held_syncs.remove(&id);
        self.queue.retain(|e| e.to != id);
        self.written.insert(id, self.durable[&id].clone());
    }

    /// Restarts `id` from its durable store, telling it what it had applied.
    pub fn restart(&mut self, id: NodeId) {
        let mut log = VecLog::new();
        self.durable[&id].recover(&mut log).unwrap();
        let mut config = (self.config)(id);
        config.applied = self.applied[&id]
            .last()
            .map_or(0, |e| e.index)
            .min(log.last_index());
        self.nodes
            .insert(id, Node::new(config, log, &self.members.clone()).unwrap());
    }

    /// The disk of `id` loses every entry after `keep_through` (a torn or truncated log, or
    /// a disk that lied about a flush): what a restart will find.
    pub fn lose_durable_tail(&mut self, id: NodeId, keep_through: Index) {
        let store = self.durable.get_mut(&id).expect("a known node");
        let keep = keep_through.saturating_sub(store.compacted.0) as usize;
        store.entries.truncate(keep);
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.role() == Role::Leader)
            .map(|n| n.id())
            .collect()
    }

    pub fn terms(&self, id: NodeId) -> Vec<Term> {
        terms_of(self.node(id).log())
    }

    /// Node `id` snapshots its state machine (here: the commands it applied, concatenated)
    /// at its applied index, which compacts its log through it.
    pub fn snapshot(&mut self, id: NodeId) -> coracle::SnapshotMeta {
        let data: Vec<u8> = self.commands(id).concat();
        let applied = self.node(id).applied_index();
        for store in [&mut self.written, &mut self.durable] {
            store
                .get_mut(&id)
                .unwrap()
                .save_taken(applied, data.clone());
        }
        let meta = self.node_mut(id).snapshot_taken(applied).unwrap();
        self.drain(id);
        meta
    }

    /// The bytes of the snapshot node `id` keeps.
    pub fn snapshot_bytes(&self, id: NodeId) -> Vec<u8> {
        let (meta, bytes) = self.written[&id].snapshot.clone().expect("a kept snapshot");
        assert_eq!(Some(meta), self.node(id).log().snapshot_meta());
        bytes
    }

    /// Commands applied by `id`, without no-ops.
    pub fn commands(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.applied[&id]
            .iter()
            .filter(|e| e.kind == EntryKind::Command)
            .map(|e| e.data.clone())
            .collect()
    }
}

/// Steps `node` with `message` from `from` and returns what it sends back, in order, with
/// syncs answered.
pub fn step_and_collect(
    node: &mut TestNode,
    from: NodeId,
    message: Message<'_>,
) -> Vec<(NodeId, OwnedMessage)> {
    node.step(from, message);
    collect(node)
}

pub fn collect(node: &mut TestNode) -> Vec<(NodeId, OwnedMessage)> {
    let mut out = Vec::new();
    loop {
        let mut sync = None;
        while let Some(o) = node.poll_output() {
            match o {
                Output::Send { to, message } => out.push((to, OwnedMessage::from(&message))),
                Output::Persist(batch) => sync = Some(batch.token),
                _ => {}
            }
        }
        match sync {
            Some(t) => node.persisted(t),
            None => return out,
        }
    }
}

/// Drains `node`, answering every batch at once, and returns the outputs that are not
/// batches, as text (for tests that look at what a lone node asks of its host).
pub fn drain_outputs<S: LogStorage>(node: &mut Node<S>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let mut sync: Option<SyncToken> = None;
        while let Some(o) = node.poll_output() {
            match o {
                Output::Persist(batch) => sync = Some(batch.token),
                other => out.push(format!("{other:?}")),
            }
        }
        match sync {
            Some(t) => node.persisted(t),
            None => return out,
        }
    }
}

/// A command entry with one byte of data.
pub fn entry(index: Index, term: Term) -> Entry<'static> {
    Entry {
        index,
        term,
        kind: EntryKind::Command,
        data: b"e",
    }
}

/// An AppendEntries of `term` after `prev` = (index, term) carrying `entries`.
pub fn append<'a>(
    term: Term,
    prev: (Index, Term),
    commit: Index,
    entries: &'a [Entry<'a>],
) -> Message<'a> {
    Message::AppendEntries(coracle::AppendEntries {
        term,
        prev_log_index: prev.0,
        prev_log_term: prev.1,
        leader_commit: commit,
        round: 0,
        entries: coracle::Entries::from_slice(entries),
    })
}
