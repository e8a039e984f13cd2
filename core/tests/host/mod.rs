//! A small in-process cluster on the storage contract, shared by the paper's tests and the
//! transcripts: an explicit message queue, links that can be cut, each node's disk a
//! [`MemStore`] that performs the node's Persist batches (at once, or held until told),
//! crashes that lose what was not acknowledged, restarts from the disk, and a state machine
//! per host. With [`Cluster::trace`] on, every output and delivery is recorded in the
//! canonical text form of [`text`].
#![allow(dead_code)]

pub mod text;

use coracle::{
    Config, Entry, EntryKind, HardState, Index, InstallSnapshot, LogStorage, MemStore, Message,
    Node, NodeId, Output, OwnedEntry, OwnedMessage, Proposal, Role, SnapshotError, SnapshotMeta,
    SyncToken, Term, VecLog,
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

/// What a recorded line is about (a transcript shows some of them only, in quiet mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A message handed to the network (or dropped at once on a cut link).
    Send,
    /// A message delivered (the receiver's outputs follow, one level deeper).
    Deliver,
    /// A queued message that never arrived (cut link, receiver down).
    Drop,
    /// Role, term or leader changed.
    State,
    /// A Persist batch.
    Persist,
    /// A held batch acknowledged.
    Persisted,
    /// An entry applied.
    Apply,
    /// The state machine restored from a snapshot.
    Restore,
    /// A read released or failed.
    Read,
    /// The node asked for a snapshot, a fetch, or sent nothing where it asked for a chunk.
    Host,
}

/// One recorded line.
#[derive(Clone, Debug)]
pub struct Event {
    /// 0 for the outputs of a command, 1 for the outputs of a delivery.
    pub depth: usize,
    pub kind: EventKind,
    pub text: String,
}

/// A host's state machine: the bytes of the commands it applied (each appended), starting
/// from the snapshot it last restored.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// Its applied index.
    pub applied: Index,
    /// Its state.
    pub data: Vec<u8>,
    /// The index it restored from and the length of the state then.
    base: (Index, usize),
    /// The length of the state after each index applied since.
    marks: Vec<usize>,
}

impl Machine {
    fn apply(&mut self, e: &Entry<'_>) {
        assert_eq!(
            e.index,
            self.applied + 1,
            "entries are applied in order, each once"
        );
        if e.kind == EntryKind::Command {
            self.data.extend_from_slice(e.data);
        }
        self.applied = e.index;
        self.marks.push(self.data.len());
    }

    fn restore(&mut self, index: Index, data: Vec<u8>) {
        *self = Machine {
            applied: index,
            base: (index, data.len()),
            data,
            marks: Vec::new(),
        };
    }

    /// The state at applied `index`, if it is still known.
    pub fn at(&self, index: Index) -> Option<Vec<u8>> {
        let (base, base_len) = self.base;
        if index < base || index > self.applied {
            return None;
        }
        let len = match index - base {
            0 => base_len,
            n => self.marks[n as usize - 1],
        };
        Some(self.data[..len].to_vec())
    }

    /// Back to applied `index` (a restart with a log shorter than what was applied).
    fn rewind(&mut self, index: Index) {
        match self.at(index) {
            Some(data) => {
                self.marks.truncate((index - self.base.0) as usize);
                self.data = data;
                self.applied = index;
            }
            None => *self = Machine::default(),
        }
    }
}

/// The cluster; `S` is the nodes' memory log (each node's disk is a [`MemStore`]).
pub struct Cluster<S: LogStorage = VecLog> {
    pub members: Vec<NodeId>,
    /// Each node's configuration (it restarts with it).
    pub configs: BTreeMap<NodeId, Config>,
    pub nodes: BTreeMap<NodeId, Node<S>>,
    /// Makes each node's empty memory log (at a start or a restart).
    fresh_log: BTreeMap<NodeId, Box<dyn Fn() -> S>>,
    /// What survives a crash: each node's store as of the last acknowledged batch.
    pub durable: BTreeMap<NodeId, MemStore>,
    /// Each node's store with every batch written, durable or not (what it reads from).
    pub written: BTreeMap<NodeId, MemStore>,
    pub queue: VecDeque<Envelope>,
    pub applied: BTreeMap<NodeId, Vec<OwnedEntry>>,
    /// Each host's state machine (it survives a crash: the host keeps it with its applied
    /// index, given back at a restart).
    pub machines: BTreeMap<NodeId, Machine>,
    /// Reads released: (id, Some(index)) ready, (id, None) failed.
    pub read_outputs: BTreeMap<NodeId, Vec<(u64, Option<Index>)>>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose Persist batches wait in `held_syncs` for [`Cluster::sync`]; the others
    /// are made durable as soon as they are drained.
    pub manual_sync: BTreeSet<NodeId>,
    pub held_syncs: BTreeMap<NodeId, SyncToken>,
    /// Nodes whose fetches wait in `held_fetches` for [`Cluster::answer_fetch`] (reads
    /// slower than the network); the others are answered as soon as they are drained.
    pub manual_fetch: BTreeSet<NodeId>,
    pub held_fetches: BTreeMap<NodeId, (Index, Index)>,
    /// The members each node was started with (it restarts with them).
    pub bootstrap: BTreeMap<NodeId, Vec<NodeId>>,
    /// Every event, in order, while set.
    pub trace: Option<Vec<Event>>,
    depth: usize,
}

pub fn default_config(id: NodeId) -> Config {
    Config::new(id, id * 7919)
}

/// A log whose entries have the terms `terms` (entry `i` a command of one byte `i - 1`).
pub fn log_with_terms(terms: &[Term], current_term: Term) -> VecLog {
    log_of(terms, current_term, |i| vec![i as u8 - 1])
}

/// A log whose entries have the terms `terms`, entry `i` a command of `data(i)`.
pub fn log_of(terms: &[Term], current_term: Term, data: impl Fn(Index) -> Vec<u8>) -> VecLog {
    let mut log = VecLog::new();
    for (i, &t) in terms.iter().enumerate() {
        let index = i as Index + 1;
        log.append(&Entry {
            index,
            term: t,
            kind: EntryKind::Command,
            data: &data(index),
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

/// Records an event when tracing (the text is built only then).
fn note(
    trace: &mut Option<Vec<Event>>,
    depth: usize,
    kind: EventKind,
    text: impl FnOnce() -> String,
) {
    if let Some(t) = trace {
        t.push(Event {
            depth,
            kind,
            text: text(),
        });
    }
}

/// Queues `message` from `from` to `to`, unless the link is cut (it is recorded either way).
fn post(
    queue: &mut VecDeque<Envelope>,
    trace: &mut Option<Vec<Event>>,
    depth: usize,
    cut: &BTreeSet<(NodeId, NodeId)>,
    from: NodeId,
    to: NodeId,
    message: &Message<'_>,
) {
    let cut = cut.contains(&(from, to));
    note(trace, depth, EventKind::Send, || {
        let dropped = if cut { " -- dropped: link cut" } else { "" };
        format!("{from}->{to} {}{dropped}", text::message(message))
    });
    if !cut {
        queue.push_back(Envelope {
            from,
            to,
            message: OwnedMessage::from(message),
        });
    }
}

impl Cluster<VecLog> {
    pub fn new(ids: &[NodeId]) -> Self {
        Self::with(ids, default_config, |_| VecLog::new())
    }

    pub fn with(
        ids: &[NodeId],
        config: impl Fn(NodeId) -> Config,
        log: impl Fn(NodeId) -> VecLog,
    ) -> Self {
        let mut c = Cluster::empty();
        for &id in ids {
            c.add(config(id), store_of(&log(id)), ids, VecLog::new);
            // A state built by hand: no leader can have been heard from recently.
            c.node_mut(id).skip_vote_guard();
        }
        c
    }
}

impl<S: LogStorage> Cluster<S> {
    /// A cluster with no node yet.
    pub fn empty() -> Self {
        Cluster {
            members: Vec::new(),
            fresh_log: BTreeMap::new(),
            configs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            durable: BTreeMap::new(),
            written: BTreeMap::new(),
            queue: VecDeque::new(),
            applied: BTreeMap::new(),
            machines: BTreeMap::new(),
            read_outputs: BTreeMap::new(),
            cut: BTreeSet::new(),
            manual_sync: BTreeSet::new(),
            held_syncs: BTreeMap::new(),
            manual_fetch: BTreeSet::new(),
            held_fetches: BTreeMap::new(),
            bootstrap: BTreeMap::new(),
            trace: None,
            depth: 0,
        }
    }

    /// Starts node `config.id` from its disk `disk` (its memory log, made by `fresh_log`, is
    /// filled from it as at a restart), knowing the cluster as `bootstrap`.
    pub fn add(
        &mut self,
        config: Config,
        disk: MemStore,
        bootstrap: &[NodeId],
        fresh_log: impl Fn() -> S + 'static,
    ) {
        let id = config.id;
        let mut log = fresh_log();
        disk.recover(&mut log).unwrap();
        self.durable.insert(id, disk.clone());
        self.written.insert(id, disk);
        self.nodes
            .insert(id, Node::new(config.clone(), log, bootstrap).unwrap());
        self.fresh_log.insert(id, Box::new(fresh_log));
        self.configs.insert(id, config);
        self.applied.insert(id, Vec::new());
        self.machines.insert(id, Machine::default());
        self.read_outputs.insert(id, Vec::new());
        self.bootstrap.insert(id, bootstrap.to_vec());
        if !self.members.contains(&id) {
            self.members.push(id);
        }
    }

    pub fn node(&self, id: NodeId) -> &Node<S> {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node<S> {
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
        let machine = self.machines.get_mut(&id).expect("a state machine");
        let held = self.manual_sync.contains(&id);
        let fetch_held = self.manual_fetch.contains(&id);
        let trace = &mut self.trace;
        let depth = self.depth;
        loop {
            let mut sync = None;
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Send { to, message } => {
                        post(&mut self.queue, trace, depth, &self.cut, id, to, &message)
                    }
                    Output::SendSnapshot {
                        to,
                        message,
                        max_len,
                    } => {
                        let Some((data, done)) = written.snapshot_chunk(
                            message.last_included_index,
                            message.offset,
                            max_len,
                        ) else {
                            note(trace, depth, EventKind::Host, || {
                                format!(
                                    "{id} has no chunk at offset {} of snapshot {} for {to}: nothing sent",
                                    message.offset,
                                    text::at(
                                        message.last_included_index,
                                        message.last_included_term
                                    )
                                )
                            });
                            continue;
                        };
                        let chunk = Message::InstallSnapshot(InstallSnapshot {
                            data,
                            done,
                            ..message
                        });
                        post(&mut self.queue, trace, depth, &self.cut, id, to, &chunk)
                    }
                    Output::Persist(batch) => {
                        note(trace, depth, EventKind::Persist, || {
                            let held = if held { " (held)" } else { "" };
                            format!("{id} {}{held}", text::persist(&batch.batch()))
                        });
                        written.persist(&batch.batch());
                        sync = Some(batch.token);
                    }
                    Output::Fetch { from, to } if fetch_held => {
                        note(trace, depth, EventKind::Host, || {
                            format!("{id} fetch {from}..={to} (held)")
                        });
                        self.held_fetches.insert(id, (from, to));
                    }
                    Output::Fetch { from, to } => {
                        let found = written.fetch(from, to).count();
                        note(trace, depth, EventKind::Host, || {
                            format!("{id} fetch {from}..={to}: {found} read from disk")
                        });
                        node.fetched(written.fetch(from, to));
                    }
                    Output::Apply(e) => {
                        note(trace, depth, EventKind::Apply, || {
                            format!("{id} apply {}", text::entry(&e))
                        });
                        machine.apply(&e);
                        self.applied.get_mut(&id).unwrap().push(e.into())
                    }
                    Output::ReadReady { id: r, index } => {
                        note(trace, depth, EventKind::Read, || {
                            format!("{id} read-ready id={r} index={index}")
                        });
                        self.read_outputs
                            .get_mut(&id)
                            .unwrap()
                            .push((r, Some(index)))
                    }
                    Output::ReadFailed { id: r } => {
                        note(trace, depth, EventKind::Read, || {
                            format!("{id} read-failed id={r}")
                        });
                        self.read_outputs.get_mut(&id).unwrap().push((r, None))
                    }
                    Output::RestoreSnapshot { index, .. } => {
                        let meta = node.log().snapshot_meta().expect("a kept snapshot");
                        assert_eq!(meta.index, index);
                        let (kept, data) = written.snapshot.clone().expect("a stored snapshot");
                        assert_eq!(kept, meta, "the store keeps the node's snapshot");
                        note(trace, depth, EventKind::Restore, || {
                            format!(
                                "{id} restore {} data={}",
                                text::at(meta.index, meta.term),
                                text::bytes(&data)
                            )
                        });
                        machine.restore(index, data);
                    }
                    Output::SnapshotNeeded => note(trace, depth, EventKind::Host, || {
                        format!("{id} snapshot-needed")
                    }),
                    Output::StateChanged(s) => note(trace, depth, EventKind::State, || {
                        let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
                        format!("{id} state {:?} term={} leader={leader}", s.role, s.term)
                    }),
                }
            }
            match sync {
                Some(t) if !held => {
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
            note(&mut self.trace, self.depth, EventKind::Persisted, || {
                format!("{id} persisted #{}", t.0)
            });
            let node = self.nodes.get_mut(&id).unwrap();
            self.durable.insert(id, self.written[&id].clone());
            node.persisted(t);
            self.drain(id);
        }
    }

    /// Answers the held fetch of node `id` from its store; false if none was held.
    pub fn answer_fetch(&mut self, id: NodeId) -> bool {
        let Some((from, to)) = self.held_fetches.remove(&id) else {
            return false;
        };
        let written = &self.written[&id];
        let found = written.fetch(from, to).count();
        note(&mut self.trace, self.depth, EventKind::Host, || {
            format!("{id} fetch {from}..={to}: {found} read from disk")
        });
        let node = self.nodes.get_mut(&id).expect("node is up");
        node.fetched(written.fetch(from, to));
        self.drain(id);
        true
    }

    pub fn drain_all(&mut self) {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drain(id);
        }
    }

    /// Delivers one queued message (dropping it if its receiver is down or the link cut).
    pub fn deliver(&mut self, env: Envelope) {
        let dropped = if self.cut.contains(&(env.from, env.to)) {
            Some("link cut")
        } else if !self.nodes.contains_key(&env.to) {
            Some("receiver down")
        } else {
            None
        };
        note(&mut self.trace, self.depth, EventKind::Deliver, || {
            let why = dropped.map_or(String::new(), |d| format!(" -- dropped: {d}"));
            let m = text::message(&env.message.as_message());
            format!("> {}->{} {m}{why}", env.from, env.to)
        });
        if dropped.is_some() {
            return;
        }
        let node = self.nodes.get_mut(&env.to).unwrap();
        node.step(env.from, env.message.as_message());
        self.depth += 1;
        self.drain(env.to);
        self.depth -= 1;
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

    /// Restarts `id` from its durable store, with its configuration and bootstrap members,
    /// telling it what its state machine has applied.
    pub fn restart(&mut self, id: NodeId) {
        let mut log = (self.fresh_log[&id])();
        self.durable[&id].recover(&mut log).unwrap();
        let mut config = self.configs[&id].clone();
        let machine = self.machines.get_mut(&id).unwrap();
        if machine.applied > log.last_index() {
            machine.rewind(log.last_index());
            let applied = machine.applied;
            self.applied
                .get_mut(&id)
                .unwrap()
                .retain(|e| e.index <= applied);
        }
        config.applied = machine.applied;
        let bootstrap = self.bootstrap[&id].clone();
        self.nodes
            .insert(id, Node::new(config, log, &bootstrap).unwrap());
    }

    /// The host of `id` lost its state machine (it restarts from nothing).
    pub fn forget_state_machine(&mut self, id: NodeId) {
        self.machines.insert(id, Machine::default());
        self.applied.insert(id, Vec::new());
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
        let log = self.node(id).log();
        (log.first_index()..=log.last_index())
            .map(|i| log.term(i).expect("terms are in memory"))
            .collect()
    }

    /// The host of `id` writes its state machine as of applied `index` to its snapshot
    /// store and tells the node ([`Node::snapshot_taken`]).
    pub fn take_snapshot(
        &mut self,
        id: NodeId,
        index: Index,
    ) -> Result<SnapshotMeta, SnapshotError> {
        if let Some(data) = self.machines[&id].at(index) {
            for store in [&mut self.written, &mut self.durable] {
                store.get_mut(&id).unwrap().save_taken(index, data.clone());
            }
        }
        let meta = self.node_mut(id).snapshot_taken(index);
        self.drain(id);
        meta
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
pub fn step_and_collect<S: LogStorage>(
    node: &mut Node<S>,
    from: NodeId,
    message: Message<'_>,
) -> Vec<(NodeId, OwnedMessage)> {
    node.step(from, message);
    collect(node)
}

pub fn collect<S: LogStorage>(node: &mut Node<S>) -> Vec<(NodeId, OwnedMessage)> {
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
