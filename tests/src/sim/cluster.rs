//! The cluster: hosts around real nodes, the event queue, the nemesis that injects faults,
//! the operator that changes membership and transfers leadership, and the oracles checked
//! after every event.

use crate::linearizability::{self, Budget, CheckResult, History, Key, Value};
use crate::oracle::{LogView, Oracles, Violation};
use crate::sim::client::{Client, Reply, Request};
use crate::sim::disk::{Batch, Disk, DiskEntry, LogImage, Observed};
use crate::sim::kv::{Command, Kv};
use crate::sim::memory::{MemoryKind, MemoryLog, ARRAY_CHUNK_BYTES};
use crate::sim::network::Network;
use crate::sim::queue::EventQueue;
use crate::sim::rng::{mix64, SimRng};
use crate::sim::{Bug, Linearizability, RunReport, SimOptions, Stats, Time, TICK};
use coracle::{
    Config, EntryKind, Index, InstallSnapshot, LogStorage, MembershipChange, MembershipError,
    Message, Node, NodeId, Output, OwnedMessage, Proposal, ProposeError, ReadError, ReadMode, Role,
    SyncToken, Term, TransferError,
};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;

/// The node type the simulator runs: its memory log of the kind its host chose, up to 8
/// peers (9 nodes), 8 messages in flight per peer.
pub type SimNode = Node<MemoryLog, 8, 8>;

/// Client timeout: an operation without an answer after this long is indeterminate.
const CLIENT_TIMEOUT: Time = 40 * TICK;

/// Writes one trace line if tracing; the arguments are only evaluated when tracing.
macro_rules! note {
    ($self:ident, $($arg:tt)*) => {
        if $self.trace.is_some() {
            let line = format!($($arg)*);
            $self.write_trace(&line);
        }
    };
}

enum Event {
    Tick {
        node: usize,
        epoch: u64,
    },
    Deliver {
        from: usize,
        to: usize,
        message: OwnedMessage,
    },
    /// The disk finished flushing the batches through `token`.
    Flush {
        node: usize,
        incarnation: u64,
        token: SyncToken,
    },
    /// The host tells the node that the batches through `token` are durable.
    Persisted {
        node: usize,
        incarnation: u64,
        token: SyncToken,
    },
    /// The host tells the node that a write failed.
    WriteFailed {
        node: usize,
        incarnation: u64,
    },
    /// Entries read back for an `Output::Fetch` (`None`: the read failed).
    FetchDone {
        node: usize,
        incarnation: u64,
        entries: Option<Vec<DiskEntry>>,
    },
    /// A chunk for an `Output::SendSnapshot` is read from the disk (or the read fails) and
    /// sent.
    SnapshotRead {
        node: usize,
        incarnation: u64,
        to: NodeId,
        message: OwnedMessage,
        max_len: usize,
        fail: bool,
    },
    /// The host's snapshot of its state machine at `index` is saved: it tells the node.
    SnapshotSaved {
        node: usize,
        incarnation: u64,
        index: Index,
    },
    /// The host stops after a failed write (it is restarted later).
    FailStop {
        node: usize,
        incarnation: u64,
    },
    Request {
        node: usize,
        request: Request,
    },
    Reply {
        client: usize,
        reply: Reply,
    },
    ClientStart {
        client: usize,
    },
    ClientResend {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    ClientTimeout {
        client: usize,
        seq: u64,
    },
    Nemesis,
    Operator,
    Restart {
        node: usize,
        incarnation: u64,
    },
    Resume {
        node: usize,
        pause: u64,
    },
}

impl Event {
    /// The host and process of a report from a host to its node's process (a flush, a
    /// read, a saved snapshot): dropped if that process crashed since, held while it is
    /// paused.
    fn report_to(&self) -> Option<(usize, u64)> {
        match self {
            Event::Persisted {
                node, incarnation, ..
            }
            | Event::WriteFailed { node, incarnation }
            | Event::FetchDone {
                node, incarnation, ..
            }
            | Event::SnapshotRead {
                node, incarnation, ..
            }
            | Event::SnapshotSaved {
                node, incarnation, ..
            } => Some((*node, *incarnation)),
            _ => None,
        }
    }
}

/// A proposal made for a client, waiting to be applied.
#[derive(Clone, Copy, Debug)]
struct Pending {
    term: Term,
    client: usize,
    seq: u64,
    attempt: u32,
}

/// A read taken with `Node::read`, waiting for `ReadReady` or `ReadFailed`.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    client: usize,
    seq: u64,
    attempt: u32,
    key: Key,
}

/// A membership change as the operator asks it (owning its member lists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `MembershipChange::AddLearner`.
    AddLearner(NodeId),
    /// `MembershipChange::AddVoter`.
    AddVoter(NodeId),
    /// `MembershipChange::Promote`.
    Promote(NodeId),
    /// `MembershipChange::Demote`.
    Demote(NodeId),
    /// `MembershipChange::Remove`.
    Remove(NodeId),
    /// `MembershipChange::Joint`.
    Joint {
        /// The new voters.
        voters: Vec<NodeId>,
        /// The new learners.
        learners: Vec<NodeId>,
    },
    /// `MembershipChange::LeaveJoint`.
    LeaveJoint,
}

impl Change {
    fn as_change(&self) -> MembershipChange<'_> {
        match self {
            Change::AddLearner(id) => MembershipChange::AddLearner(*id),
            Change::AddVoter(id) => MembershipChange::AddVoter(*id),
            Change::Promote(id) => MembershipChange::Promote(*id),
            Change::Demote(id) => MembershipChange::Demote(*id),
            Change::Remove(id) => MembershipChange::Remove(*id),
            Change::Joint { voters, learners } => MembershipChange::Joint { voters, learners },
            Change::LeaveJoint => MembershipChange::LeaveJoint,
        }
    }
}

/// The configuration a node uses: voters, old voters while joint, learners.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Voters (of the new configuration while joint).
    pub voters: Vec<NodeId>,
    /// Voters of the old configuration while joint (empty otherwise).
    pub outgoing: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
}

impl Membership {
    /// The configuration `node` uses now.
    pub fn of(node: &SimNode) -> Self {
        let mut m = Membership::default();
        for member in node.members() {
            if member.voter {
                m.voters.push(member.id);
            }
            if member.voter_outgoing {
                m.outgoing.push(member.id);
            }
            if member.learner {
                m.learners.push(member.id);
            }
        }
        m
    }

    /// Whether `id` is in the configuration at all.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id) || self.learners.contains(&id)
    }

    /// Whether `agree` holds for a majority of the voters (and of the old voters while
    /// joint).
    pub fn quorum(&self, agree: impl Fn(NodeId) -> bool) -> bool {
        [&self.voters, &self.outgoing].iter().all(|half| {
            half.is_empty() || half.iter().filter(|&&v| agree(v)).count() > half.len() / 2
        })
    }
}

/// What surrounds one node: its process state, disk, state machine and clock.
struct Host {
    id: NodeId,
    /// The running node; `None` while crashed.
    node: Option<Box<SimNode>>,
    /// The kind of memory log the host gives its node (at every start).
    memory: MemoryKind,
    /// The durable store.
    disk: Disk,
    incarnation: u64,
    tick_epoch: u64,
    tick_period: Time,
    paused_since: Option<Time>,
    pause_id: u64,
    /// Inputs that arrived while paused.
    inbox: Vec<Event>,
    kv: Kv,
    pending: HashMap<Index, Pending>,
    reads: HashMap<u64, PendingRead>,
    next_read: u64,
    /// The host snapshots once it has applied through this index.
    snapshot_due: Index,
    /// The node asked for a snapshot (`Output::SnapshotNeeded`: its memory log is full).
    snapshot_needed: bool,
    /// When the disk is done with the flushes queued so far.
    disk_free_at: Time,
    /// The disk flushes slowly until then (`slow-disk`).
    slow_until: Time,
    /// The disk returns no flush until then (`hung-disk`).
    hung_until: Time,
    /// Flushes queued and not yet returned, and when the one running began (the
    /// watchdog's view, `hung-disk`).
    flushes_queued: u64,
    flush_began: Option<Time>,
    /// The next flush fails (`disk-fail`).
    fail_next_flush: bool,
    /// A write failed in this incarnation and the node was told: the host stops its state
    /// machine and serves no client until it restarts the node.
    storage_failed: bool,
}

/// Role, term and log shape before an input, to see what it changed.
struct Before {
    role: Role,
    term: Term,
    last: Index,
    commit: Index,
    truncations: u64,
}

impl Before {
    fn of(node: &SimNode, disk: &Disk) -> Self {
        Before {
            role: node.role(),
            term: node.term(),
            last: node.last_index(),
            commit: node.commit_index(),
            truncations: disk.written().truncations(),
        }
    }
}

enum Input {
    Tick,
    Advance(u64),
    Step(NodeId, OwnedMessage),
    Persisted(SyncToken),
    PersistFailed,
    /// The host's watchdog: a flush has run too long (`true`), or returned (`false`).
    StorageStalled(bool),
    Fetched(Option<Vec<DiskEntry>>),
    Request(Request),
    Propose(Vec<u8>),
    Campaign,
    /// Snapshot the state machine; `true`: now, whatever the schedule.
    Snapshot(bool),
    /// The host's snapshot at this index is saved.
    SnapshotTaken(Index),
    Change(Change),
    Transfer(NodeId),
}

/// What an operator input returned.
enum Outcome {
    Proposed(Result<Proposal, ProposeError>),
    Changed(Result<Proposal, MembershipError>),
    Transferred(Result<(), TransferError>),
    Done,
}

/// An output of a node that waits for the oracles, copied out so the node can be used
/// again.
enum Drained {
    Apply {
        index: Index,
        term: Term,
        command: Option<Command>,
    },
    ReadReady {
        id: u64,
        index: Index,
    },
    ReadFailed {
        id: u64,
    },
    Restore {
        index: Index,
    },
    SnapshotNeeded,
}

/// A simulated cluster. Drive it event by event ([`Cluster::step`]), for a while
/// ([`Cluster::run_for_ticks`], [`Cluster::run_until`]), or inject faults by hand
/// ([`Cluster::crash`], [`Cluster::partition`], ...) for scenario tests.
pub struct Cluster {
    options: SimOptions,
    seed: u64,
    template: Config,
    members: Vec<NodeId>,
    now: Time,
    queue: EventQueue<Event>,
    hosts: Vec<Host>,
    network: Network,
    rng_net: SimRng,
    rng_disk: SimRng,
    rng_fault: SimRng,
    rng_client: SimRng,
    rng_op: SimRng,
    rng_read: SimRng,
    clients: Vec<Client>,
    clients_on: bool,
    nemesis_on: bool,
    operator_on: bool,
    history: History,
    oracles: Oracles,
    events: u64,
    /// `events` when healing began (for `max_heal_events`).
    heal_started: Option<u64>,
    stats: Stats,
    trace: Option<Box<dyn Write>>,
    /// The node states last written to the trace.
    last_states: String,
    /// The outputs of the node being drained (kept to reuse the allocation).
    drained: Vec<Drained>,
}

impl Cluster {
    /// A cluster of `options.nodes` fresh nodes, with clients and the nemesis as the
    /// options say. Nothing runs until it is stepped.
    pub fn new(seed: u64, options: SimOptions, trace: Option<Box<dyn Write>>) -> Self {
        let mut root = SimRng::new(seed);
        let mut rng_config = root.fork();
        let rng_net = root.fork();
        let mut rng_disk = root.fork();
        let rng_fault = root.fork();
        let rng_client = root.fork();
        let rng_op = root.fork();
        let rng_read = root.fork();
        let faults = options.faults;
        let voters = options.nodes.clamp(1, 9);
        let n = if faults.membership {
            (voters + 2).min(9)
        } else {
            voters
        };
        let template = options
            .config
            .clone()
            .unwrap_or_else(|| random_config(&mut rng_config, &faults));
        let members: Vec<NodeId> = (1..=voters as NodeId).collect();
        let universe: Vec<NodeId> = (1..=n as NodeId).collect();
        let memory: Vec<MemoryKind> = universe
            .iter()
            .map(|_| {
                options
                    .memory
                    .unwrap_or_else(|| random_memory(&mut rng_config, &template))
            })
            .collect();
        let hosts = universe
            .iter()
            .zip(&memory)
            .map(|(&id, &memory)| Host {
                id,
                node: None,
                memory,
                disk: Disk::new(),
                incarnation: 0,
                tick_epoch: 0,
                tick_period: if faults.skew {
                    TICK * rng_disk.range(70, 130) / 100
                } else {
                    TICK
                },
                paused_since: None,
                pause_id: 0,
                inbox: Vec::new(),
                kv: Kv::new(),
                pending: HashMap::new(),
                reads: HashMap::new(),
                next_read: 0,
                snapshot_due: 0,
                snapshot_needed: false,
                disk_free_at: 0,
                slow_until: 0,
                hung_until: 0,
                flushes_queued: 0,
                flush_began: None,
                fail_next_flush: false,
                storage_failed: false,
            })
            .collect();
        let clients = (1..=options.clients as u64).map(Client::new).collect();
        let mut cluster = Cluster {
            seed,
            template,
            oracles: Oracles::new(&members),
            members,
            now: 0,
            queue: EventQueue::new(),
            hosts,
            network: Network::new(n, &faults),
            rng_net,
            rng_disk,
            rng_fault,
            rng_client,
            rng_op,
            rng_read,
            clients,
            clients_on: false,
            nemesis_on: faults.any_nemesis(),
            operator_on: faults.any_operator(),
            history: History::new(),
            events: 0,
            heal_started: None,
            stats: Stats::default(),
            trace,
            last_states: String::new(),
            drained: Vec::new(),
            options,
        };
        if faults.drop {
            cluster.network.drop_rate = [0.0, 0.01, 0.05][cluster.rng_fault.index(3)];
        }
        if faults.duplicate {
            cluster.network.duplicate_rate = [0.0, 0.01, 0.05][cluster.rng_fault.index(3)];
        }
        note!(
            cluster,
            "start: seed {seed}, {n} nodes, faults {}, memory logs {}, config {:?}",
            faults,
            memory
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            cluster.template
        );
        for i in 0..n {
            cluster.hosts[i].snapshot_due = cluster.next_snapshot(0);
            cluster.start_node(i);
        }
        if cluster.operator_on {
            let at = cluster.rng_op.range(30, 100) * TICK;
            cluster.schedule(at, Event::Operator);
        }
        cluster.set_clients(cluster.options.clients > 0);
        if cluster.nemesis_on {
            let at = cluster.rng_fault.range(10, 50) * TICK;
            cluster.schedule(at, Event::Nemesis);
        }
        cluster
    }

    // ----- driving ------------------------------------------------------------------------

    /// Processes the next event; false if there is none.
    pub fn step(&mut self) -> bool {
        let Some((time, event)) = self.queue.pop() else {
            return false;
        };
        self.now = time;
        self.events += 1;
        self.handle(event);
        if self.trace.is_some() {
            self.trace_states();
        }
        self.check_resources();
        true
    }

    /// A run whose events multiply (a message storm) fails here, naming the seed, before it
    /// exhausts the machine: the queue may hold `max_queued_events`, and healing may take
    /// `max_heal_events` (counted from `heal_started`).
    fn check_resources(&mut self) {
        let queued = self.queue.len();
        let max_queued = self.options.max_queued_events;
        if queued > max_queued {
            self.liveness(format!(
                "resource bound: {queued} events wait in the queue (at most {max_queued}) \
                 after {} events: a message storm (seed {})",
                self.events, self.seed
            ));
            return;
        }
        if let Some(start) = self.heal_started {
            let healing = self.events - start;
            let max = self.options.max_heal_events;
            if healing > max {
                self.liveness(format!(
                    "resource bound: healing took over {max} events without settling \
                     (seed {})",
                    self.seed
                ));
            }
        }
    }

    /// Runs `steps` more events with faults injected, stopping at the first violation.
    pub fn run_faults(&mut self, steps: u64) {
        let target = self.events + steps;
        while self.events < target && !self.has_violation() && self.step() {}
    }

    /// Runs for `ticks` nominal ticks of simulated time (or until a violation).
    pub fn run_for_ticks(&mut self, ticks: u64) {
        let deadline = self.now + ticks * TICK;
        while !self.has_violation() && self.peek_time().is_some_and(|t| t <= deadline) {
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    /// Runs until `done` holds (checked before every event), for at most `ticks` nominal
    /// ticks; true if it held.
    pub fn run_until(&mut self, ticks: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        let deadline = self.now + ticks * TICK;
        loop {
            if done(self) {
                return true;
            }
            if self.has_violation() || self.now >= deadline || !self.step() {
                return false;
            }
        }
    }

    /// Stops the nemesis, heals the network, restarts crashed nodes and resumes paused
    /// ones; then checks liveness: a leader within `liveness_ticks`, an answered operation
    /// for every client, and every node caught up with the leader.
    pub fn heal_and_check_liveness(&mut self) {
        if self.has_violation() {
            return;
        }
        self.heal_started = Some(self.events);
        self.heal_everything();
        if self.has_violation() {
            return;
        }
        if self.options.faults.hung_disk {
            // A hung disk has healed once the flushes it held return (up to 300 ticks after
            // it hung): the liveness bounds start then, not while its node still cannot vote.
            let disks_back = self.hosts.iter().map(|h| h.disk_free_at).max().unwrap_or(0);
            if disks_back > self.now {
                self.run_until((disks_back - self.now).div_ceil(TICK), |_| false);
                if self.has_violation() {
                    return;
                }
            }
        }
        let bound = self.options.liveness_ticks;
        let start = self.now;
        if !self.run_until(bound, |c| c.leader().is_some()) {
            self.liveness(format!(
                "no leader within {bound} ticks after every fault healed"
            ));
            return;
        }
        if !self.clients.is_empty() {
            self.set_clients(true);
            let progressed = |c: &Cluster| {
                c.clients
                    .iter()
                    .all(|cl| cl.last_ok_invoked.is_some_and(|t| t >= start))
            };
            if !self.run_until(3 * bound, progressed) {
                self.liveness(format!(
                    "a client completed no operation within {} ticks after every fault healed",
                    3 * bound
                ));
                return;
            }
        }
        self.set_clients(false);
        // A node far behind catches up at a rate set by the batch size and window; allow
        // for it (a stalled node still fails).
        let catch_up = bound + 2 * self.committed_index();
        if !self.run_until(catch_up, |c| c.converged()) {
            let why = self.lagging();
            self.liveness(format!(
                "the nodes did not converge on the leader's log within {catch_up} ticks: {why}"
            ));
        }
    }

    /// Checks the client history and produces the report of the run.
    pub fn finish(mut self) -> RunReport {
        if !self.has_violation() {
            self.check_durable();
        }
        let linearizability = if self.options.check_linearizability {
            match linearizability::check(
                &self.history,
                Budget::steps(self.options.linearizability_budget),
            ) {
                CheckResult::Linearizable => Linearizability::Linearizable,
                CheckResult::NotLinearizable(r) => Linearizability::NotLinearizable(r.to_string()),
                CheckResult::Unknown { keys } => Linearizability::Unknown(keys),
            }
        } else {
            Linearizability::Skipped
        };
        if let Linearizability::NotLinearizable(r) = &linearizability {
            note!(self, "NOT LINEARIZABLE: {r}");
        }
        let mut stats = self.stats.clone();
        stats.sim_time = self.now;
        stats.elections = self.oracles.elections() as u64;
        stats.committed = self.oracles.committed_index();
        stats.ops_ok = self.clients.iter().map(|c| c.ok).sum();
        stats.ops_timed_out = self.clients.iter().map(|c| c.timed_out).sum();
        RunReport {
            seed: self.seed,
            events: self.events,
            violations: self.oracles.violations().to_vec(),
            linearizability,
            stats,
        }
    }

    // ----- faults by hand -----------------------------------------------------------------

    /// Crashes node `id`: everything not durable is lost (all of it, or with the `torn`
    /// fault class sometimes a prefix is kept).
    pub fn crash(&mut self, id: NodeId) {
        if let Some(i) = self.index_of(id) {
            self.crash_node(i);
        }
    }

    /// Restarts crashed node `id` from its durable image.
    pub fn restart(&mut self, id: NodeId) {
        if let Some(i) = self.index_of(id) {
            self.restart_node(i);
        }
    }

    /// Pauses node `id` for `ticks` nominal ticks: it neither ticks nor handles messages,
    /// which wait for it; then its clock jumps.
    pub fn pause(&mut self, id: NodeId, ticks: u64) {
        if let Some(i) = self.index_of(id) {
            self.pause_node(i, ticks * TICK);
        }
    }

    /// Links up only inside each group; nodes in no group are isolated.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        let groups: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.iter().filter_map(|&id| self.index_of(id)).collect())
            .collect();
        self.network.partition(&groups);
        self.stats.network_changes += 1;
        note!(
            self,
            "partition {:?}: {}",
            groups_ids(&groups),
            self.network.describe()
        );
    }

    /// Cuts the link `from -> to` only (`to` stops hearing `from`).
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        if let (Some(a), Some(b)) = (self.index_of(from), self.index_of(to)) {
            self.network.set_link(a, b, false);
            self.stats.network_changes += 1;
            note!(self, "cut {from}->{to}: {}", self.network.describe());
        }
    }

    /// The partial partition of the whiteboard: with `order` = [A, B, C, D, E], A, B and C
    /// are connected, D reaches only B, E only C (for other sizes, see
    /// [`Network::bridge`]).
    pub fn partial_partition(&mut self, order: &[NodeId]) {
        let order: Vec<usize> = order.iter().filter_map(|&id| self.index_of(id)).collect();
        self.network.bridge(&order);
        self.stats.network_changes += 1;
        note!(
            self,
            "partial partition {:?}: {}",
            ids(&order),
            self.network.describe()
        );
    }

    /// Every link up.
    pub fn heal(&mut self) {
        self.network.heal();
        self.stats.network_changes += 1;
        note!(self, "heal network");
    }

    /// Proposes a put of `value` under `key` directly on node `id` (as its host would for
    /// a local client).
    pub fn put(&mut self, id: NodeId, key: Key, value: Value) -> Result<Proposal, ProposeError> {
        let command = Command {
            client: 0,
            seq: 0,
            op: linearizability::Op::Put { key, value },
        };
        let not_leader = Err(ProposeError::NotLeader { leader: None });
        let Some(i) = self.index_of(id) else {
            return not_leader;
        };
        match self.node_input(i, Input::Propose(command.encode())) {
            Some(Outcome::Proposed(r)) => r,
            _ => not_leader,
        }
    }

    /// Asks node `id` to change the membership (as an operator would).
    pub fn change_membership(
        &mut self,
        id: NodeId,
        change: Change,
    ) -> Result<Proposal, MembershipError> {
        let not_leader = Err(MembershipError::NotLeader { leader: None });
        let Some(i) = self.index_of(id) else {
            return not_leader;
        };
        match self.node_input(i, Input::Change(change)) {
            Some(Outcome::Changed(r)) => r,
            _ => not_leader,
        }
    }

    /// Asks node `id` to hand leadership to `target`.
    pub fn transfer_leadership(&mut self, id: NodeId, target: NodeId) -> Result<(), TransferError> {
        let not_leader = Err(TransferError::NotLeader { leader: None });
        let Some(i) = self.index_of(id) else {
            return not_leader;
        };
        match self.node_input(i, Input::Transfer(target)) {
            Some(Outcome::Transferred(r)) => r,
            _ => not_leader,
        }
    }

    /// Makes the host of node `id` snapshot its state machine at its applied index now
    /// (the node compacts its log behind it, keeping `Config::keep_entries_behind_snapshot`
    /// entries), even while it sends a snapshot to a peer.
    pub fn snapshot(&mut self, id: NodeId) {
        if let Some(i) = self.index_of(id) {
            self.node_input(i, Input::Snapshot(true));
        }
    }

    /// Turns the operator (membership changes, transfers) on or off.
    pub fn set_operator(&mut self, on: bool) {
        let was = self.operator_on;
        self.operator_on = on;
        if on && !was {
            let at = self.now + self.rng_op.range(20, 120) * TICK;
            self.schedule(at, Event::Operator);
        }
    }

    /// Makes node `id` campaign now.
    pub fn campaign(&mut self, id: NodeId) {
        if let Some(i) = self.index_of(id) {
            self.node_input(i, Input::Campaign);
        }
    }

    /// Turns the client workload on or off (in-flight operations still finish).
    pub fn set_clients(&mut self, on: bool) {
        let was = self.clients_on;
        self.clients_on = on;
        if on && !was {
            for c in 0..self.clients.len() {
                let at = self.now + self.rng_client.range(0, 5 * TICK);
                self.schedule(at, Event::ClientStart { client: c });
            }
        }
    }

    // ----- observation --------------------------------------------------------------------

    /// Node `id`, if it is running.
    pub fn node(&self, id: NodeId) -> Option<&SimNode> {
        self.index_of(id)
            .and_then(|i| self.hosts[i].node.as_deref())
    }

    /// The value node `id`'s state machine holds under `key`.
    pub fn kv_get(&self, id: NodeId, key: Key) -> Option<Value> {
        self.index_of(id).and_then(|i| self.hosts[i].kv.get(key))
    }

    /// A leader followed by a quorum of its configuration (itself included) in its term,
    /// if there is one.
    pub fn leader(&self) -> Option<NodeId> {
        self.running().find_map(|l| {
            if l.role() != Role::Leader {
                return None;
            }
            let config = Membership::of(l);
            let follows = |id: NodeId| {
                self.node(id)
                    .is_some_and(|n| n.term() == l.term() && n.leader() == Some(l.id()))
            };
            config.quorum(follows).then_some(l.id())
        })
    }

    /// The configuration node `id` uses, if it runs.
    pub fn membership(&self, id: NodeId) -> Option<Membership> {
        self.node(id).map(Membership::of)
    }

    /// Every running node that believes it leads, with its term.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.running()
            .filter(|n| n.role() == Role::Leader)
            .map(|n| (n.id(), n.term()))
            .collect()
    }

    /// True when every member of the leader's configuration runs and has applied the
    /// leader's whole log (nodes outside it are not waited for).
    pub fn converged(&self) -> bool {
        let Some(li) = self.leader().and_then(|l| self.index_of(l)) else {
            return false;
        };
        let Some(l) = self.hosts[li].node.as_deref() else {
            return false;
        };
        let last = l.last_index();
        let entry = self.hosts[li].disk.written().id(last);
        let config = Membership::of(l);
        l.commit_index() == last
            && self.hosts.iter().all(|h| {
                !config.contains(h.id)
                    || h.node.as_ref().is_some_and(|n| {
                        n.applied_index() == last && h.disk.written().id(last) == entry
                    })
            })
    }

    /// Why the cluster has not converged: the members that lag, and for each whether it
    /// knows the leader as a peer (a node ignores messages from nodes it does not know).
    fn lagging(&self) -> String {
        let Some(l) = self.leader().and_then(|l| self.node(l)) else {
            return "no leader".into();
        };
        let config = Membership::of(l);
        let mut out = format!(
            "leader n{} at {} (commit {}), config {:?}:",
            l.id(),
            l.last_index(),
            l.commit_index(),
            config
        );
        for h in &self.hosts {
            if !config.contains(h.id) {
                continue;
            }
            match h.node.as_deref() {
                None => {
                    let _ = write!(out, " n{} down;", h.id);
                }
                Some(n) if n.applied_index() != l.last_index() => {
                    let _ = write!(
                        out,
                        " n{} applied {} last {}{};",
                        h.id,
                        n.applied_index(),
                        n.last_index(),
                        if n.progress(l.id()).is_none() && n.id() != l.id() {
                            " (does not know the leader: ignores it)"
                        } else {
                            ""
                        }
                    );
                }
                Some(_) => {}
            }
        }
        out
    }

    /// Every violation found so far.
    pub fn violations(&self) -> &[Violation] {
        self.oracles.violations()
    }

    /// The last index known committed on any node.
    pub fn committed_index(&self) -> Index {
        self.oracles.committed_index()
    }

    /// Events processed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Simulated time, in microseconds.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The client history so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The member ids.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    fn running(&self) -> impl Iterator<Item = &SimNode> + '_ {
        self.hosts.iter().filter_map(|h| h.node.as_deref())
    }

    fn has_violation(&self) -> bool {
        !self.oracles.violations().is_empty()
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        (i < self.hosts.len()).then_some(i)
    }

    fn peek_time(&self) -> Option<Time> {
        self.queue.peek_time()
    }

    // ----- the event loop -----------------------------------------------------------------

    fn schedule(&mut self, time: Time, event: Event) {
        self.queue.push(time, event);
    }

    fn handle(&mut self, event: Event) {
        if let Some((node, incarnation)) = event.report_to() {
            if !self.admit(node, incarnation) {
                note!(self, "report to n{} lost with its process", node + 1);
                return;
            }
            if self.hosts[node].paused_since.is_some() {
                note!(self, "report to n{} held (paused)", node + 1);
                self.hosts[node].inbox.push(event);
                return;
            }
        }
        match event {
            Event::Tick { node, epoch } => {
                let h = &self.hosts[node];
                if h.node.is_none() || h.paused_since.is_some() || h.tick_epoch != epoch {
                    return;
                }
                let period = h.tick_period;
                note!(self, "tick n{}", h.id);
                self.node_input(node, Input::Tick);
                if self.options.faults.hung_disk {
                    self.watch_flush(node);
                }
                let h = &self.hosts[node];
                if (self.options.faults.snapshot || h.snapshot_needed)
                    && h.kv.applied() >= h.snapshot_due
                {
                    self.node_input(node, Input::Snapshot(false));
                }
                self.schedule(self.now + period, Event::Tick { node, epoch });
            }
            Event::Deliver { from, to, message } => {
                let (a, b) = (self.hosts[from].id, self.hosts[to].id);
                if !self.network.can_reach(from, to) {
                    self.stats.dropped += 1;
                    note!(
                        self,
                        "drop {a}->{b} {} (link down)",
                        describe(&message.as_message())
                    );
                    return;
                }
                let h = &mut self.hosts[to];
                if h.node.is_none() {
                    self.stats.dropped += 1;
                    note!(
                        self,
                        "drop {a}->{b} {} (receiver down)",
                        describe(&message.as_message())
                    );
                    return;
                }
                if h.paused_since.is_some() {
                    h.inbox.push(Event::Deliver { from, to, message });
                    note!(self, "hold {a}->{b} (receiver paused)");
                    return;
                }
                note!(self, "deliver {a}->{b} {}", describe(&message.as_message()));
                self.node_input(to, Input::Step(a, message));
            }
            Event::Flush {
                node,
                incarnation,
                token,
            } => self.flushed(node, incarnation, token),
            Event::Persisted { node, token, .. } => {
                note!(
                    self,
                    "n{} told batches through {} are durable",
                    node + 1,
                    token.0
                );
                self.node_input(node, Input::Persisted(token));
            }
            Event::WriteFailed { node, .. } => {
                note!(self, "n{} told a write failed", node + 1);
                self.node_input(node, Input::PersistFailed);
            }
            Event::FetchDone { node, entries, .. } => {
                match &entries {
                    Some(e) => note!(self, "n{} fetched {} entries", node + 1, e.len()),
                    None => note!(self, "n{} fetch failed", node + 1),
                }
                self.node_input(node, Input::Fetched(entries));
            }
            Event::SnapshotRead {
                node,
                to,
                message,
                max_len,
                fail,
                ..
            } => self.send_snapshot_chunk(node, to, &message, max_len, fail),
            Event::SnapshotSaved { node, index, .. } => {
                self.node_input(node, Input::SnapshotTaken(index));
            }
            Event::FailStop { node, incarnation } => {
                if self.hosts[node].incarnation != incarnation {
                    return;
                }
                note!(self, "n{} stops after its failed write", node + 1);
                if let Some(incarnation) = self.crash_node(node) {
                    let at = self.now + self.rng_fault.range(1, 30) * TICK;
                    self.schedule(at, Event::Restart { node, incarnation });
                }
            }
            Event::Request { node, request } => {
                let h = &mut self.hosts[node];
                if h.node.is_none() {
                    note!(
                        self,
                        "request of client {} lost: n{} is down",
                        request.command.client,
                        node + 1
                    );
                    return;
                }
                if h.paused_since.is_some() {
                    h.inbox.push(Event::Request { node, request });
                    note!(
                        self,
                        "request of client {} held: n{} is paused",
                        request.command.client,
                        node + 1
                    );
                    return;
                }
                note!(
                    self,
                    "request client {} -> n{}: {} (seq {}, attempt {})",
                    request.command.client,
                    node + 1,
                    request.command.op,
                    request.command.seq,
                    request.attempt
                );
                self.node_input(node, Input::Request(request));
            }
            Event::Reply { client, reply } => self.on_reply(client, reply),
            Event::ClientStart { client } => self.client_start(client),
            Event::ClientResend {
                client,
                seq,
                attempt,
            } => {
                let c = &mut self.clients[client];
                if let Some(f) = c.in_flight.as_mut() {
                    if f.command.seq == seq && f.attempt == attempt {
                        f.attempt += 1;
                        let id = c.id;
                        note!(self, "client {id} resends seq {seq}");
                        self.send_request(client);
                        return;
                    }
                }
                note!(self, "client resend timer (stale)");
            }
            Event::ClientTimeout { client, seq } => {
                let c = &mut self.clients[client];
                let Some(f) = c.in_flight else {
                    return;
                };
                if f.command.seq != seq {
                    note!(self, "client timer (stale)");
                    return;
                }
                c.in_flight = None;
                c.leader_hint = None;
                c.timed_out += 1;
                let id = c.id;
                if let Err(e) = self.history.timeout(f.op_id) {
                    self.harness(format!("history: {e}"));
                }
                note!(
                    self,
                    "client {id} timed out on {} (indeterminate)",
                    f.command.op
                );
                let at = self.now + self.rng_client.range(TICK / 2, 5 * TICK);
                self.schedule(at, Event::ClientStart { client });
            }
            Event::Nemesis => self.nemesis(),
            Event::Operator => self.operator(),
            Event::Restart { node, incarnation } => {
                if self.hosts[node].incarnation == incarnation {
                    self.restart_node(node);
                } else {
                    note!(self, "restart timer of n{} (stale)", node + 1);
                }
            }
            Event::Resume { node, pause } => {
                if self.hosts[node].pause_id == pause {
                    self.resume_node(node);
                } else {
                    note!(self, "resume timer of n{} (stale)", node + 1);
                }
            }
        }
    }

    /// Whether a report from node `i`'s host to its process of `incarnation` can reach it
    /// (it did not crash since).
    fn admit(&self, i: usize, incarnation: u64) -> bool {
        let h = &self.hosts[i];
        h.incarnation == incarnation && h.node.is_some()
    }

    /// Feeds one input to node `i`, then runs the oracles and handles every output.
    fn node_input(&mut self, i: usize, input: Input) -> Option<Outcome> {
        let mut node = self.hosts[i].node.take()?;
        let before = Before::of(&node, &self.hosts[i].disk);
        let mut result = Outcome::Done;
        match input {
            Input::Tick => node.tick(),
            Input::Advance(ticks) => node.advance(ticks),
            Input::Step(from, message) => node.step(from, message.as_message()),
            Input::Persisted(token) => node.persisted(token),
            Input::PersistFailed => {
                node.persist_failed();
                if !node.storage_failed() {
                    self.storage_violation(node.id(), "a failed write is not reported".into());
                }
            }
            Input::StorageStalled(stalled) => node.set_storage_stalled(stalled),
            Input::Fetched(Some(entries)) => node.fetched(entries.iter().map(DiskEntry::as_entry)),
            Input::Fetched(None) => node.fetch_failed(),
            Input::Request(request) => self.serve(i, &mut node, request),
            Input::Propose(command) => result = Outcome::Proposed(node.propose(&command)),
            Input::Campaign => node.campaign(),
            Input::Snapshot(now) => self.take_snapshot(i, &mut node, now),
            Input::SnapshotTaken(index) if !self.hosts[i].storage_failed => {
                self.snapshot_taken(&mut node, index)
            }
            Input::SnapshotTaken(_) => {}
            Input::Change(change) => {
                let r = node.change_membership(change.as_change());
                note!(self, "OPERATOR n{}: {change:?} -> {r:?}", node.id());
                if r.is_ok() {
                    self.stats.membership_changes += 1;
                }
                result = Outcome::Changed(r);
            }
            Input::Transfer(target) => {
                let r = node.transfer_leadership(target);
                note!(
                    self,
                    "OPERATOR n{}: transfer to n{target} -> {r:?}",
                    node.id()
                );
                if r.is_ok() {
                    self.stats.transfers += 1;
                }
                result = Outcome::Transferred(r);
            }
        }
        self.after_input(i, &mut node, before);
        self.hosts[i].node = Some(node);
        Some(result)
    }

    /// The host of node `i` snapshots its state machine at its applied index into its disk
    /// and tells the node, at once (`now`) or once the snapshot is written (a disk delay
    /// later: the node goes on meanwhile). The node compacts its log behind it.
    fn take_snapshot(&mut self, i: usize, node: &mut SimNode, now: bool) {
        let applied = self.hosts[i].kv.applied();
        let due = self.next_snapshot(applied);
        let h = &mut self.hosts[i];
        h.snapshot_due = due;
        h.snapshot_needed = false;
        if applied == 0 || applied != node.applied_index() || h.storage_failed {
            return;
        }
        if node
            .log()
            .snapshot_meta()
            .is_some_and(|m| m.index >= applied)
        {
            return;
        }
        let Some(id) = h.disk.written().id(applied) else {
            let first = h.disk.written().first_index();
            self.harness(format!(
                "node {}: its disk lacks its applied entry {applied} (first index {first})",
                node.id()
            ));
            return;
        };
        let data = h.kv.snapshot(id.chain);
        h.disk.save_taken(applied, data);
        self.stats.snapshots += 1;
        if now || self.rng_disk.chance(0.5) {
            self.snapshot_taken(node, applied);
        } else {
            let at = self.now + self.disk_latency(i);
            let incarnation = self.hosts[i].incarnation;
            note!(self, "n{} writes a snapshot through {applied}", node.id());
            self.schedule(
                at,
                Event::SnapshotSaved {
                    node: i,
                    incarnation,
                    index: applied,
                },
            );
        }
    }

    /// The host's snapshot through `index` is on its disk: the node keeps it.
    fn snapshot_taken(&mut self, node: &mut SimNode, index: Index) {
        let r = node.snapshot_taken(index);
        note!(
            self,
            "SNAPSHOT n{} through {index}: {:?} (first index now {})",
            node.id(),
            r.map(|m| m.term),
            node.log().first_index()
        );
    }

    /// The applied index at which a host snapshots next.
    fn next_snapshot(&mut self, applied: Index) -> Index {
        applied + self.rng_disk.range(10, 120)
    }

    /// A client request reached node `i`.
    fn serve(&mut self, i: usize, node: &mut SimNode, request: Request) {
        let (seq, attempt) = (request.command.seq, request.attempt);
        if self.hosts[i].storage_failed {
            self.send_reply(request.client, Reply::Retry { seq, attempt });
            return;
        }
        if let linearizability::Op::Get { key } = request.command.op {
            if self.options.bug != Some(Bug::StaleReads)
                && self.rng_client.below(100) < self.options.read_percent
            {
                self.read(i, node, request, key);
                return;
            }
        }
        if let (Some(Bug::StaleReads), linearizability::Op::Get { key }, false) = (
            self.options.bug,
            request.command.op,
            node.role() == Role::Leader,
        ) {
            let output = linearizability::Output::Read(self.hosts[i].kv.get(key));
            self.send_reply(
                request.client,
                Reply::Done {
                    seq,
                    attempt,
                    output,
                },
            );
            return;
        }
        if node.role() != Role::Leader {
            let hint = node.leader();
            self.send_reply(request.client, Reply::NotLeader { seq, attempt, hint });
            return;
        }
        match node.propose(&request.command.encode()) {
            Ok(p) => {
                note!(
                    self,
                    "n{} proposes client {} seq {seq} at {}/{}",
                    node.id(),
                    request.command.client,
                    p.index,
                    p.term
                );
                self.hosts[i].pending.insert(
                    p.index,
                    Pending {
                        term: p.term,
                        client: request.client,
                        seq,
                        attempt,
                    },
                );
            }
            Err(e) => {
                note!(
                    self,
                    "n{} refuses client {}: {e}",
                    node.id(),
                    request.command.client
                );
                self.send_reply(request.client, Reply::Retry { seq, attempt });
            }
        }
    }

    /// A get served as a linearizable read through `Node::read`.
    fn read(&mut self, i: usize, node: &mut SimNode, request: Request, key: Key) {
        let (seq, attempt) = (request.command.seq, request.attempt);
        if self.options.bug == Some(Bug::UnconfirmedReads) && node.role() == Role::Leader {
            let output = linearizability::Output::Read(self.hosts[i].kv.get(key));
            self.send_reply(
                request.client,
                Reply::Done {
                    seq,
                    attempt,
                    output,
                },
            );
            return;
        }
        let t = &self.template;
        let lease_safe = !self.options.faults.skew
            || u64::from(t.lease_drift_ticks) * 13 > u64::from(t.election_ticks) * 6;
        let mode = if lease_safe && self.rng_client.chance(0.3) {
            ReadMode::Lease
        } else {
            ReadMode::ReadIndex
        };
        let h = &mut self.hosts[i];
        h.next_read += 1;
        let id = h.next_read;
        match node.read(id, mode) {
            Ok(()) => {
                note!(
                    self,
                    "n{} reads {key} for client {} seq {seq} ({mode:?}, read {id})",
                    node.id(),
                    request.command.client
                );
                self.hosts[i].reads.insert(
                    id,
                    PendingRead {
                        client: request.client,
                        seq,
                        attempt,
                        key,
                    },
                );
            }
            Err(ReadError::NoLeader) => {
                let hint = node.leader();
                self.send_reply(request.client, Reply::NotLeader { seq, attempt, hint });
            }
            Err(ReadError::Busy) => self.send_reply(request.client, Reply::Retry { seq, attempt }),
        }
    }

    /// After an input: the node's outputs are drained, its batches performed on the disk
    /// as they come; then the oracles look (the disk's written image is the node's log
    /// now, with its chain hashes); then the host handles the other outputs.
    fn after_input(&mut self, i: usize, node: &mut SimNode, before: Before) {
        let mut drained = std::mem::take(&mut self.drained);
        let wrote = self.collect_outputs(i, node, &mut drained);
        // Once its storage failed, a follower's memory log runs ahead of the disk (it
        // appends what it may not write): only the checks of the storage contract apply to
        // it until its host restarts it. A leader appends nothing more, so its disk's
        // written image still is its log, and what it commits (with its followers) counts.
        if !self.hosts[i].storage_failed {
            // The memory log changes only with writes, and every write is in a batch.
            if wrote {
                self.check_store(i, node);
            }
            self.check_node(i, node, before);
        } else if node.role() == Role::Leader {
            self.check_node(i, node, before);
        }
        self.check_durable_index(i, node);
        for out in drained.drain(..) {
            self.handle_output(i, node, out);
        }
        self.drained = drained;
    }

    /// Drains every output of node `i`, performing its batches on the host's disk; true if
    /// there was a batch.
    fn collect_outputs(
        &mut self,
        i: usize,
        node: &mut SimNode,
        drained: &mut Vec<Drained>,
    ) -> bool {
        let id = node.id();
        // The contract binds the node once it was told (a report held while the node is
        // paused has not reached it yet).
        let failed = node.storage_failed();
        let mut wrote = false;
        loop {
            let out = match node.poll_output() {
                None => break,
                Some(Output::StateChanged(s)) => {
                    note!(
                        self,
                        "n{id} is {:?} of term {} (leader {:?})",
                        s.role,
                        s.term,
                        s.leader
                    );
                    continue;
                }
                Some(Output::Persist(persist)) => {
                    if failed {
                        self.storage_violation(
                            id,
                            "a batch handed out after a failed write".into(),
                        );
                        continue;
                    }
                    let Some(batch) = Batch::of(&persist) else {
                        let token = persist.token.0;
                        self.storage_violation(
                            id,
                            format!("batch {token} has entries its memory log lacks"),
                        );
                        continue;
                    };
                    let token = batch.token();
                    if self.trace.is_some() {
                        let line = format!("n{id} writes batch {}: {}", token.0, batch.describe());
                        self.write_trace(&line);
                    }
                    let (oracles, stats) = (&mut self.oracles, &mut self.stats);
                    let performed = self.hosts[i].disk.perform(batch, &mut |seen| match seen {
                        Observed::Appended(index, entry) => oracles.appended(id, index, entry),
                        Observed::Installed(index, entry) => {
                            stats.installs += 1;
                            oracles.installed(id, index, entry);
                        }
                    });
                    if let Err(e) = performed {
                        self.storage_violation(id, format!("batch {}: {e}", token.0));
                    }
                    wrote = true;
                    self.flush_later(i, token);
                    continue;
                }
                Some(Output::Fetch { from, to }) => {
                    self.fetch(i, from, to);
                    continue;
                }
                Some(Output::Send { to, message }) => {
                    let acknowledges = matches!(
                        message,
                        Message::RequestVoteResponse(_)
                            | Message::AppendEntriesResponse(_)
                            | Message::InstallSnapshotResponse(_)
                    );
                    if failed && acknowledges {
                        let what = format!("{} sent after a failed write", describe(&message));
                        self.storage_violation(id, what);
                    }
                    self.send(i, to, OwnedMessage::from(&message));
                    continue;
                }
                Some(Output::SendSnapshot {
                    to,
                    message,
                    max_len,
                }) => {
                    let message = OwnedMessage::from(&Message::InstallSnapshot(message));
                    self.read_snapshot_chunk(i, to, message, max_len);
                    continue;
                }
                Some(Output::Apply(e)) => Drained::Apply {
                    index: e.index,
                    term: e.term,
                    command: match e.kind {
                        EntryKind::Command => Command::decode(e.data),
                        _ => None,
                    },
                },
                Some(Output::ReadReady { id, index }) => Drained::ReadReady { id, index },
                Some(Output::ReadFailed { id }) => Drained::ReadFailed { id },
                Some(Output::RestoreSnapshot { index, .. }) => Drained::Restore { index },
                Some(Output::SnapshotNeeded) => Drained::SnapshotNeeded,
            };
            drained.push(out);
        }
        wrote
    }

    /// The batches node `i` handed out, performed in order, made the disk hold what its
    /// memory log holds (bounds, hard state, kept snapshot, the last entry).
    fn check_store(&mut self, i: usize, node: &SimNode) {
        let (disk, log) = (self.hosts[i].disk.written(), node.log());
        let last = log.last_index();
        let what = if (disk.first_index(), disk.last_index()) != (log.first_index(), last) {
            format!(
                "its disk holds {}..={} and its memory log {}..={last}",
                disk.first_index(),
                disk.last_index(),
                log.first_index()
            )
        } else if disk.hard_state() != log.hard_state() {
            format!(
                "its disk holds hard state {:?} and its memory log {:?}",
                disk.hard_state(),
                log.hard_state()
            )
        } else if disk.snapshot().map(|(m, _)| *m) != log.snapshot_meta() {
            format!(
                "its disk keeps the snapshot through {:?} and its memory log {:?}",
                disk.snapshot().map(|(m, _)| m.index),
                log.snapshot_meta().map(|m| m.index)
            )
        } else if disk.id(last).map(|e| e.term) != log.term(last)
            || log.entry(last).is_some_and(|e| disk.entry(last) != Some(e))
        {
            format!("its disk and its memory log differ at their last entry {last}")
        } else {
            return;
        };
        self.storage_violation(node.id(), what);
    }

    /// What node `i` reports durable is on its disk's durable image.
    fn check_durable_index(&mut self, i: usize, node: &SimNode) {
        let durable_index = node.durable_index();
        let disk = &self.hosts[i].disk;
        let durable = disk.durable();
        // Entries a snapshot covers are not judged: compacted on the disk, or replaced in
        // the log by a snapshot being installed (the core counts those as durable until
        // the install is, and restores only once it is).
        if durable_index < durable.first_index() || durable_index < disk.written().first_index() {
            return;
        }
        let holds = match disk.written().id(durable_index) {
            Some(id) => durable.id(durable_index) == Some(id),
            None => durable.id(durable_index).is_some(),
        };
        if !holds {
            let what = format!(
                "reports entries through {durable_index} durable, its disk's durable image \
                 holds {}..={} (another entry there, or none)",
                durable.first_index(),
                durable.last_index()
            );
            self.storage_violation(node.id(), what);
        }
    }

    /// The safety oracles after an input of node `i`.
    fn check_node(&mut self, i: usize, node: &SimNode, before: Before) {
        let id = node.id();
        let log = self.hosts[i].disk.written();
        let (role, term) = (node.role(), node.term());
        if role != Role::Follower {
            let me = node.members().find(|m| m.id == id);
            let votes = me.is_some_and(|m| m.voter || m.voter_outgoing);
            let removal_pending = log.config_index() > node.commit_index();
            let name = match role {
                Role::Leader => "leader",
                Role::Candidate => "candidate",
                _ => "pre-candidate",
            };
            // A node left out by a configuration entry not yet committed may still
            // campaign and lead (`Node::may_campaign`).
            if !(votes || removal_pending) {
                self.oracles.not_a_voter(id, term, name);
            }
        }
        if role == Role::Leader {
            if before.role == Role::Leader && before.term == term {
                self.oracles.leader_stepped(
                    id,
                    term,
                    before.last,
                    node.last_index(),
                    log.truncations() != before.truncations,
                );
            } else {
                self.oracles.became_leader(id, term, log);
            }
        }
        if self.oracles.commit(id, term, node.commit_index(), log) {
            if role == Role::Leader {
                self.oracles.check_complete(id, term, log);
            }
            for h in self.hosts.iter().filter(|h| !h.storage_failed) {
                if let Some(n) = h.node.as_deref().filter(|n| n.role() == Role::Leader) {
                    self.oracles
                        .check_complete(n.id(), n.term(), h.disk.written());
                }
            }
        }
        if before.role == Role::Leader
            && before.term == term
            && node.commit_index() > before.commit
            && self.oracles.violations().is_empty()
        {
            let config = Membership::of(node);
            let durable = durable_images(&self.hosts);
            self.oracles.leader_committed(
                id,
                term,
                node.commit_index(),
                &config.voters,
                &config.outgoing,
                durable.into_iter(),
            );
        }
    }

    /// The host of node `i` acts on one output.
    fn handle_output(&mut self, i: usize, node: &SimNode, out: Drained) {
        let id = node.id();
        let failed = self.hosts[i].storage_failed;
        match out {
            Drained::Apply { index, .. } | Drained::Restore { index } if failed => {
                note!(
                    self,
                    "n{id}: state machine stopped (failed write), {index} not applied"
                );
            }
            Drained::Apply {
                index,
                term,
                command,
            } => self.apply(i, node, index, term, command),
            Drained::ReadReady { id: rid, index } => {
                let Some(r) = self.hosts[i].reads.remove(&rid) else {
                    return;
                };
                let applied = self.hosts[i].kv.applied();
                if failed {
                    note!(self, "n{id} read {rid} ready, not served (failed write)");
                    let retry = Reply::Retry {
                        seq: r.seq,
                        attempt: r.attempt,
                    };
                    self.send_reply(r.client, retry);
                    return;
                }
                if applied < index {
                    self.harness(format!(
                        "node {id}: read {rid} ready at index {index}, but only {applied} \
                         is applied"
                    ));
                    return;
                }
                let value = self.hosts[i].kv.get(r.key);
                note!(
                    self,
                    "n{id} read {rid} ready at {index} (applied {applied}): key {} = {value:?}",
                    r.key
                );
                self.stats.reads += 1;
                self.send_reply(
                    r.client,
                    Reply::Done {
                        seq: r.seq,
                        attempt: r.attempt,
                        output: linearizability::Output::Read(value),
                    },
                );
            }
            Drained::ReadFailed { id: rid } => {
                if let Some(r) = self.hosts[i].reads.remove(&rid) {
                    note!(self, "n{id} read {rid} failed");
                    self.send_reply(
                        r.client,
                        Reply::Retry {
                            seq: r.seq,
                            attempt: r.attempt,
                        },
                    );
                }
            }
            Drained::Restore { index } => self.restore(i, node, index),
            Drained::SnapshotNeeded => {
                note!(self, "n{id} needs a snapshot (its memory log is full)");
                let h = &mut self.hosts[i];
                h.snapshot_needed = true;
                h.snapshot_due = 0;
            }
        }
    }

    /// Node `i`'s disk flushes the batch of `token` after the ones before it.
    fn flush_later(&mut self, i: usize, token: SyncToken) {
        let at = (self.now + self.disk_latency(i)).max(self.hosts[i].disk_free_at);
        let h = &mut self.hosts[i];
        // A hung disk returns nothing until it answers again.
        let at = at.max(h.hung_until);
        h.disk_free_at = at;
        if h.flushes_queued == 0 {
            h.flush_began = Some(self.now);
        }
        h.flushes_queued += 1;
        let incarnation = h.incarnation;
        self.schedule(
            at,
            Event::Flush {
                node: i,
                incarnation,
                token,
            },
        );
        if self.options.bug == Some(Bug::EarlyAck) {
            let ack = Event::Persisted {
                node: i,
                incarnation,
                token,
            };
            self.schedule(self.now, ack);
        }
    }

    /// The watchdog of node `i`'s host: a flush returned (the next queued one runs from now
    /// on); a node told its storage stalled is told it answers again.
    fn flush_returned(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        h.flushes_queued = h.flushes_queued.saturating_sub(1);
        h.flush_began = (h.flushes_queued > 0).then_some(self.now);
        if h.node.as_ref().is_some_and(|n| n.storage_stalled()) {
            note!(self, "n{}'s disk answers again", i + 1);
            self.node_input(i, Input::StorageStalled(false));
        }
    }

    /// The watchdog of node `i`'s host, at a tick: a flush running for three election
    /// timeouts is a stall, which the node is told of.
    fn watch_flush(&mut self, i: usize) {
        let h = &self.hosts[i];
        let Some(node) = h.node.as_ref() else { return };
        let limit = 3 * node.config().election_ticks as Time * TICK;
        if !node.storage_stalled() && h.flush_began.is_some_and(|b| self.now - b >= limit) {
            self.stats.stalls_reported += 1;
            if node.role() == Role::Leader {
                self.stats.stalled_leaders += 1;
            }
            note!(
                self,
                "n{}'s flush has run {} ticks: STORAGE STALLED",
                i + 1,
                limit / TICK
            );
            self.node_input(i, Input::StorageStalled(true));
        }
    }

    /// Node `i` asks for the entries `from..=to`: its host reads them from its disk now
    /// and hands them in when the read completes (stale by then, perhaps).
    fn fetch(&mut self, i: usize, from: Index, to: Index) {
        self.stats.fetches += 1;
        let entries = if self.read_fails() {
            self.stats.fetch_failures += 1;
            None
        } else {
            Some(self.hosts[i].disk.read(from, to))
        };
        note!(
            self,
            "n{} asks for entries {from}..={to}: {}",
            i + 1,
            match &entries {
                Some(e) => format!("{} read", e.len()),
                None => "the read fails".into(),
            }
        );
        let at = self.now + self.read_latency();
        let incarnation = self.hosts[i].incarnation;
        self.schedule(
            at,
            Event::FetchDone {
                node: i,
                incarnation,
                entries,
            },
        );
    }

    /// Node `i` asks to send a chunk of its kept snapshot: its host reads it from its disk
    /// (when the read completes) and sends it.
    fn read_snapshot_chunk(&mut self, i: usize, to: NodeId, message: OwnedMessage, max_len: usize) {
        let fail = self.read_fails();
        let at = self.now + self.read_latency();
        let incarnation = self.hosts[i].incarnation;
        self.schedule(
            at,
            Event::SnapshotRead {
                node: i,
                incarnation,
                to,
                message,
                max_len,
                fail,
            },
        );
    }

    /// The disk of node `i` flushed the batches through `token`: the host tells the node
    /// (at once, or late with `slow-disk`), unless the flush fails (`disk-fail`).
    fn flushed(&mut self, i: usize, incarnation: u64, token: SyncToken) {
        let h = &mut self.hosts[i];
        if h.incarnation != incarnation || h.storage_failed {
            note!(self, "flush of n{} through {} lost", i + 1, token.0);
            return;
        }
        if std::mem::take(&mut h.fail_next_flush) {
            h.disk.fail();
            h.storage_failed = true;
            self.stats.write_failures += 1;
            note!(
                self,
                "WRITE FAILS on n{}: batches through {} and later never become durable",
                i + 1,
                token.0
            );
            self.handle(Event::WriteFailed {
                node: i,
                incarnation,
            });
            let at = self.now + self.rng_fault.range(1, 20) * TICK;
            self.schedule(
                at,
                Event::FailStop {
                    node: i,
                    incarnation,
                },
            );
            return;
        }
        h.disk.flush_through(token);
        note!(self, "n{} flushed batches through {}", i + 1, token.0);
        self.flush_returned(i);
        let ack = Event::Persisted {
            node: i,
            incarnation,
            token,
        };
        if self.options.faults.slow_disk && self.rng_disk.chance(0.1) {
            self.stats.late_acks += 1;
            let at = self.now + self.rng_disk.range(TICK / 2, 10 * TICK);
            self.schedule(at, ack);
        } else {
            self.handle(ack);
        }
    }

    /// Node `i`'s host reads a chunk of its kept snapshot from its disk for
    /// `Output::SendSnapshot` and sends it (nothing if the read fails or the disk keeps
    /// another snapshot now).
    fn send_snapshot_chunk(
        &mut self,
        i: usize,
        to: NodeId,
        message: &OwnedMessage,
        max_len: usize,
        fail: bool,
    ) {
        let Message::InstallSnapshot(header) = message.as_message() else {
            return;
        };
        let chunk = if fail {
            None
        } else {
            self.hosts[i]
                .disk
                .snapshot_chunk(header.last_included_index, header.offset, max_len)
                .map(|(data, done)| {
                    OwnedMessage::from(&Message::InstallSnapshot(InstallSnapshot {
                        data,
                        done,
                        ..header
                    }))
                })
        };
        match chunk {
            Some(chunk) => {
                self.stats.snapshot_chunks += 1;
                self.send(i, to, chunk);
            }
            None => note!(
                self,
                "n{} sends n{to} no chunk at {} of the snapshot through {} ({})",
                i + 1,
                header.offset,
                header.last_included_index,
                if fail {
                    "the read fails"
                } else {
                    "not kept, or past its end"
                }
            ),
        }
    }

    /// The node asks its host to restore the state machine from the snapshot its disk
    /// keeps.
    fn restore(&mut self, i: usize, node: &SimNode, index: Index) {
        let id = node.id();
        let disk = &self.hosts[i].disk;
        let Some((meta, data)) = disk.written().snapshot() else {
            self.harness(format!(
                "node {id}: restore through {index} without a snapshot"
            ));
            return;
        };
        let Some(kv) = Kv::restore(data).filter(|kv| meta.index == index && kv.applied() == index)
        else {
            self.harness(format!(
                "node {id}: restore through {index}, but the snapshot kept is through {}",
                meta.index
            ));
            return;
        };
        if disk
            .durable()
            .snapshot()
            .is_none_or(|(m, _)| m.index < index)
        {
            self.stats.restores_not_durable += 1;
        }
        let entry = disk.written().id(index);
        let digest = kv.digest();
        note!(
            self,
            "n{id} restores its state machine from the snapshot through {index}"
        );
        let h = &mut self.hosts[i];
        h.kv = kv;
        h.pending.retain(|&p, _| p > index);
        self.oracles.restored(id, index, entry, digest);
    }

    fn send(&mut self, from: usize, to: NodeId, message: OwnedMessage) {
        self.stats.messages += 1;
        let Some(to_i) = self.index_of(to) else {
            self.harness(format!("node {} sent to unknown node {to}", from + 1));
            return;
        };
        let copies = self
            .network
            .transmit(&mut self.rng_net, self.now, from, to_i);
        let times = copies.times();
        if self.trace.is_some() {
            let fate = match times.len() {
                0 => "lost".to_string(),
                1 => format!("arrives +{}us", times[0] - self.now),
                _ => format!(
                    "duplicated, arrives +{}us and +{}us",
                    times[0] - self.now,
                    times[1] - self.now
                ),
            };
            let line = format!(
                "send {}->{to} {}: {fate}",
                from + 1,
                describe(&message.as_message())
            );
            self.write_trace(&line);
        }
        match times {
            [] => self.stats.dropped += 1,
            [t] => self.schedule(
                *t,
                Event::Deliver {
                    from,
                    to: to_i,
                    message,
                },
            ),
            [t, u, ..] => {
                let (t, u) = (*t, *u);
                self.schedule(
                    t,
                    Event::Deliver {
                        from,
                        to: to_i,
                        message: message.clone(),
                    },
                );
                self.schedule(
                    u,
                    Event::Deliver {
                        from,
                        to: to_i,
                        message,
                    },
                );
            }
        }
    }

    fn apply(
        &mut self,
        i: usize,
        node: &SimNode,
        index: Index,
        term: Term,
        command: Option<Command>,
    ) {
        let id = node.id();
        let disk = &self.hosts[i].disk;
        let Some(entry) = disk.written().id(index) else {
            self.harness(format!(
                "node {id} applied entry {index}, which its disk lacks"
            ));
            return;
        };
        if disk.durable().id(index) != Some(entry) {
            self.oracles
                .report(Violation::AppliedNotDurable { node: id, index });
        }
        self.oracles.applied(id, index, entry);
        let h = &mut self.hosts[i];
        let output = match command {
            Some(c) => Some((c, h.kv.apply(index, &c.op))),
            None => {
                h.kv.skip(index);
                None
            }
        };
        let digest = h.kv.digest();
        self.oracles.state(id, index, digest, "apply");
        note!(
            self,
            "n{id} applies {index}/{term}{}",
            match output {
                Some((c, out)) => format!(": client {} {} -> {out}", c.client, c.op),
                None => String::new(),
            }
        );
        let Some(p) = self.hosts[i].pending.remove(&index) else {
            return;
        };
        match output {
            Some((c, out)) if p.term == term && c.seq == p.seq => {
                self.oracles.acknowledged(index);
                self.send_reply(
                    p.client,
                    Reply::Done {
                        seq: p.seq,
                        attempt: p.attempt,
                        output: out,
                    },
                );
            }
            _ => {
                // Another entry was committed at the proposal's index: it can never commit.
                self.send_reply(
                    p.client,
                    Reply::Retry {
                        seq: p.seq,
                        attempt: p.attempt,
                    },
                );
            }
        }
    }

    // ----- clients ------------------------------------------------------------------------

    fn client_latency(&mut self) -> Option<Time> {
        if self.rng_net.chance(self.network.drop_rate) {
            return None;
        }
        Some(self.network.latency(&mut self.rng_net).max(1))
    }

    fn send_reply(&mut self, client: usize, reply: Reply) {
        if let Some(d) = self.client_latency() {
            self.schedule(self.now + d, Event::Reply { client, reply });
        }
    }

    fn send_request(&mut self, client: usize) {
        let n = self.hosts.len();
        let c = &mut self.clients[client];
        let Some(f) = c.in_flight else {
            return;
        };
        let node = match c.leader_hint {
            Some(l) => l,
            None => {
                let l = self.rng_client.index(n);
                c.leader_hint = Some(l);
                l
            }
        };
        let request = Request {
            client,
            attempt: f.attempt,
            command: f.command,
        };
        if let Some(d) = self.client_latency() {
            self.schedule(self.now + d, Event::Request { node, request });
        }
    }

    fn client_start(&mut self, client: usize) {
        if !self.clients_on || self.clients[client].in_flight.is_some() {
            note!(self, "client {} idle", client + 1);
            return;
        }
        let keys = self.options.keys;
        let command = self.clients[client].next_command(&mut self.rng_client, keys);
        let op_id = self
            .history
            .invoke(self.clients[client].id, self.now, command.op);
        self.clients[client].in_flight = Some(crate::sim::client::InFlight {
            op_id,
            command,
            attempt: 0,
        });
        note!(
            self,
            "client {} invokes {} (seq {})",
            command.client,
            command.op,
            command.seq
        );
        self.schedule(
            self.now + CLIENT_TIMEOUT,
            Event::ClientTimeout {
                client,
                seq: command.seq,
            },
        );
        self.send_request(client);
    }

    fn on_reply(&mut self, client: usize, reply: Reply) {
        let n = self.hosts.len();
        let c = &mut self.clients[client];
        let Some(f) = c.in_flight else {
            note!(self, "reply to client {} (stale)", client + 1);
            return;
        };
        if reply.target() != (f.command.seq, f.attempt) {
            note!(self, "reply to client {} (stale)", client + 1);
            return;
        }
        match reply {
            Reply::Done { output, .. } => {
                c.in_flight = None;
                c.ok += 1;
                c.learn(&f.command.op, &output);
                let id = c.id;
                let invoked = self.history.get(f.op_id).map(|o| o.invoked);
                self.clients[client].last_ok_invoked = invoked;
                if let Err(e) = self.history.complete(f.op_id, self.now, output) {
                    self.harness(format!("history: {e}"));
                }
                note!(self, "client {id} gets {} -> {output}", f.command.op);
                let at = self.now + self.rng_client.range(TICK / 2, 5 * TICK);
                self.schedule(at, Event::ClientStart { client });
            }
            Reply::NotLeader { hint, .. } => {
                let hinted = hint
                    .and_then(|h| usize::try_from(h).ok()?.checked_sub(1))
                    .filter(|&h| h < n);
                c.leader_hint = hinted.or_else(|| Some(self.rng_client.index(n)));
                let id = c.id;
                note!(self, "client {id}: not the leader, try n{:?}", hint);
                let backoff = if hinted.is_some() {
                    0
                } else {
                    self.rng_client.range(TICK, 3 * TICK)
                };
                self.schedule(
                    self.now + backoff,
                    Event::ClientResend {
                        client,
                        seq: f.command.seq,
                        attempt: f.attempt,
                    },
                );
            }
            Reply::Retry { .. } => {
                note!(self, "client {}: retry later", client + 1);
                let at = self.now + self.rng_client.range(TICK, 3 * TICK);
                self.schedule(
                    at,
                    Event::ClientResend {
                        client,
                        seq: f.command.seq,
                        attempt: f.attempt,
                    },
                );
            }
        }
    }

    // ----- node lifecycle -----------------------------------------------------------------

    fn config_for(&self, i: usize, applied: Index) -> Config {
        let h = &self.hosts[i];
        Config {
            id: h.id,
            seed: mix64(self.seed ^ mix64(h.id) ^ mix64(h.incarnation << 32)),
            applied,
            ..self.template.clone()
        }
    }

    /// Starts node `i` on a memory log filled from its disk's durable image (the first
    /// start, or a restart).
    fn start_node(&mut self, i: usize) {
        let h = &self.hosts[i];
        let (id, applied) = (h.id, h.kv.applied());
        let config = self.config_for(i, applied);
        let started = MemoryLog::recover(h.memory, h.disk.durable())
            .map_err(|e| format!("filling its memory log: {e}"))
            .and_then(|log| {
                SimNode::new(config, log, &self.members)
                    .map_err(|e| format!("{e} (state machine applied through {applied})"))
            });
        match started {
            Ok(node) => {
                let h = &mut self.hosts[i];
                h.node = Some(Box::new(node));
                h.tick_epoch += 1;
                h.paused_since = None;
                h.disk_free_at = self.now;
                h.flushes_queued = 0;
                h.flush_began = None;
                h.storage_failed = false;
                let (epoch, period) = (h.tick_epoch, h.tick_period);
                self.oracles.restarted(id, applied, applied);
                let at = self.now + self.rng_disk.range(1, period);
                self.schedule(at, Event::Tick { node: i, epoch });
            }
            Err(reason) => self
                .oracles
                .report(Violation::RestartFailed { node: id, reason }),
        }
    }

    fn crash_node(&mut self, i: usize) -> Option<u64> {
        self.hosts[i].node.take()?;
        let disk = &self.hosts[i].disk;
        let unflushed = disk.unflushed();
        let (keep, cut) = if self.options.faults.torn && self.rng_fault.chance(0.5) {
            let keep = self.rng_fault.range(0, unflushed as u64) as usize;
            let last = keep.checked_sub(1).and_then(|k| disk.pending().nth(k));
            let cut = match last {
                Some(b) if b.entries() > 0 && self.rng_fault.chance(0.5) => {
                    Some(self.rng_fault.range(0, b.entries() as u64 - 1) as usize)
                }
                _ => None,
            };
            (keep, cut)
        } else {
            (0, None)
        };
        let h = &mut self.hosts[i];
        h.disk.crash(keep, cut);
        h.incarnation += 1;
        h.tick_epoch += 1;
        h.paused_since = None;
        h.inbox.clear();
        h.pending.clear();
        h.reads.clear();
        h.storage_failed = false;
        let incarnation = h.incarnation;
        self.stats.crashes += 1;
        note!(
            self,
            "CRASH n{} ({unflushed} batches not flushed, {keep} survive{})",
            i + 1,
            match cut {
                Some(n) => format!(", the last with {n} of its entries"),
                None => String::new(),
            }
        );
        self.check_durable();
        Some(incarnation)
    }

    /// How many entries at the end of crashed node `i`'s log every other node's disk holds
    /// too (same index and chain): what a `lose-tail` fault may take from it without losing
    /// anything the cluster relies on. None unless the others are a majority by themselves.
    fn losable_tail(&self, i: usize) -> u64 {
        let image = self.hosts[i].disk.durable();
        let others: Vec<&dyn LogView> = durable_images(&self.hosts)
            .into_iter()
            .filter(|&(id, _)| id != self.hosts[i].id)
            .map(|(_, view)| view)
            .collect();
        if others.len() * 2 <= self.hosts.len() {
            return 0;
        }
        // Entries the snapshot covers are not lost with the log's tail.
        let snapshot = image.snapshot().map_or(0, |(meta, _)| meta.index);
        let floor = image.first_index().max(snapshot + 1).max(1);
        let mut index = image.last_index();
        while index >= floor {
            let id = image.id(index);
            if id.is_none() || !others.iter().all(|o| o.entry_id(index) == id) {
                break;
            }
            index -= 1;
        }
        image.last_index() - index
    }

    fn restart_node(&mut self, i: usize) {
        if self.hosts[i].node.is_some() {
            return;
        }
        let losable = if self.options.faults.lose_tail && self.rng_fault.chance(0.5) {
            self.losable_tail(i).min(self.rng_fault.range(1, 40))
        } else {
            0
        };
        match self.options.bug {
            Some(Bug::VoteAmnesia) => self.hosts[i].disk.damage(LogImage::forget_vote),
            Some(Bug::LoseDurable) => {
                let n = self.rng_fault.range(1, 3) as usize;
                self.hosts[i].disk.damage(|image| image.forget_entries(n));
            }
            Some(Bug::StaleReads) | Some(Bug::UnconfirmedReads) | Some(Bug::EarlyAck) | None => {}
        }
        let before = self.hosts[i].disk.durable().last_index();
        if losable > 0 {
            self.hosts[i]
                .disk
                .damage(|image| image.forget_entries(losable as usize));
        }
        let last = self.hosts[i].disk.durable().last_index();
        let lost = before - last;
        let mut keep_state_machine = self.rng_fault.chance(0.5);
        if lost > 0 {
            self.stats.tails_lost += 1;
            self.stats.entries_lost += lost;
            note!(
                self,
                "n{} disk lost its tail: {lost} entries through {before}",
                i + 1
            );
            // A state machine kept on disk beside the log is no longer backed by it.
            keep_state_machine &= self.hosts[i].kv.applied() <= last;
        }
        if !keep_state_machine {
            self.hosts[i].kv = Kv::new();
        }
        note!(
            self,
            "RESTART n{} (state machine {})",
            i + 1,
            if keep_state_machine {
                "kept"
            } else {
                "rebuilt from the log"
            }
        );
        self.start_node(i);
        self.check_durable();
    }

    fn pause_node(&mut self, i: usize, duration: Time) {
        let h = &mut self.hosts[i];
        if h.node.is_none() || h.paused_since.is_some() {
            return;
        }
        h.paused_since = Some(self.now);
        h.tick_epoch += 1;
        h.pause_id += 1;
        let pause = h.pause_id;
        self.stats.pauses += 1;
        note!(self, "PAUSE n{} for {}us", i + 1, duration);
        self.schedule(self.now + duration, Event::Resume { node: i, pause });
    }

    fn resume_node(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        let Some(since) = h.paused_since.take() else {
            return;
        };
        let ticks = (self.now - since) / h.tick_period;
        let (epoch, period) = (h.tick_epoch, h.tick_period);
        let inbox = std::mem::take(&mut h.inbox);
        note!(
            self,
            "RESUME n{} (clock jumps {ticks} ticks, {} inputs waiting)",
            i + 1,
            inbox.len()
        );
        if ticks > 0 {
            self.node_input(i, Input::Advance(ticks));
        }
        self.schedule(self.now + period, Event::Tick { node: i, epoch });
        for event in inbox {
            self.schedule(self.now, event);
        }
    }

    fn heal_everything(&mut self) {
        self.nemesis_on = false;
        self.operator_on = false;
        self.network.heal();
        self.network.drop_rate = 0.0;
        self.network.duplicate_rate = 0.0;
        note!(
            self,
            "HEAL everything: network, disks, crashed and paused nodes"
        );
        for i in 0..self.hosts.len() {
            let h = &mut self.hosts[i];
            h.slow_until = 0;
            h.hung_until = 0;
            h.fail_next_flush = false;
            if h.storage_failed {
                self.crash_node(i);
            }
            if self.hosts[i].node.is_none() {
                self.restart_node(i);
            } else if self.hosts[i].paused_since.is_some() {
                self.resume_node(i);
            }
        }
    }

    // ----- the nemesis --------------------------------------------------------------------

    fn nemesis(&mut self) {
        if !self.nemesis_on {
            note!(self, "nemesis (off)");
            return;
        }
        let f = self.options.faults;
        let n = self.hosts.len();
        let healed = self.network.is_healed();
        let actions: [(bool, u64); 11] = [
            (!healed, 4),               // heal
            (f.partition && n > 1, 2),  // partition
            (f.asymmetric && n > 1, 1), // one-way cuts
            (f.partial && n > 2, 1),    // partial partition
            (f.crash, 3),               // crash one node
            (f.crash, 1),               // crash every node (cold start)
            (f.pause, 2),               // pause
            (f.drop || f.duplicate, 1), // loss and duplication rates
            (f.slow_disk, 2),           // a disk flushes slowly for a while
            (f.disk_fail, 1),           // a disk fails its next flush
            (f.hung_disk, 2),           // a disk hangs for a while
        ];
        let total: u64 = actions.iter().filter(|a| a.0).map(|a| a.1).sum();
        if total > 0 {
            let mut pick = self.rng_fault.below(total);
            let mut chosen = 0;
            for (k, &(on, w)) in actions.iter().enumerate() {
                if !on {
                    continue;
                }
                if pick < w {
                    chosen = k;
                    break;
                }
                pick -= w;
            }
            self.nemesis_action(chosen);
        }
        let at = self.now + self.rng_fault.range(5, 60) * TICK;
        self.schedule(at, Event::Nemesis);
    }

    fn nemesis_action(&mut self, action: usize) {
        let n = self.hosts.len();
        let mut order: Vec<usize> = (0..n).collect();
        for k in (1..n).rev() {
            let j = self.rng_fault.index(k + 1);
            order.swap(k, j);
        }
        match action {
            0 => self.heal(),
            1 => {
                let cut = self.rng_fault.range(1, n as u64 - 1) as usize;
                let (a, b) = order.split_at(cut);
                self.network.partition(&[a.to_vec(), b.to_vec()]);
                self.stats.network_changes += 1;
                note!(
                    self,
                    "PARTITION {:?} | {:?}: {}",
                    ids(a),
                    ids(b),
                    self.network.describe()
                );
            }
            2 => {
                for _ in 0..self.rng_fault.range(1, 3) {
                    let a = self.rng_fault.index(n);
                    let b = (a + 1 + self.rng_fault.index(n - 1)) % n;
                    self.network.set_link(a, b, false);
                }
                self.stats.network_changes += 1;
                note!(self, "ASYMMETRIC cuts: {}", self.network.describe());
            }
            3 => {
                self.network.bridge(&order);
                self.stats.network_changes += 1;
                note!(
                    self,
                    "PARTIAL partition {:?}: {}",
                    ids(&order),
                    self.network.describe()
                );
            }
            4 => {
                let up: Vec<usize> = (0..n).filter(|&i| self.hosts[i].node.is_some()).collect();
                if !up.is_empty() {
                    let i = up[self.rng_fault.index(up.len())];
                    if let Some(incarnation) = self.crash_node(i) {
                        let at = self.now + self.rng_fault.range(1, 100) * TICK;
                        self.schedule(
                            at,
                            Event::Restart {
                                node: i,
                                incarnation,
                            },
                        );
                    }
                }
            }
            5 => {
                note!(self, "COLD RESTART of every node");
                for i in 0..n {
                    if let Some(incarnation) = self.crash_node(i) {
                        let at = self.now + self.rng_fault.range(1, 20) * TICK;
                        self.schedule(
                            at,
                            Event::Restart {
                                node: i,
                                incarnation,
                            },
                        );
                    }
                }
            }
            6 => {
                let i = self.rng_fault.index(n);
                let d = self.rng_fault.range(1, 40) * TICK;
                self.pause_node(i, d);
            }
            8 => {
                let i = self.rng_fault.index(n);
                let ticks = self.rng_fault.range(20, 200);
                self.hosts[i].slow_until = self.now + ticks * TICK;
                self.stats.slow_disks += 1;
                note!(self, "SLOW DISK on n{} for {ticks} ticks", i + 1);
            }
            9 => {
                let i = self.rng_fault.index(n);
                self.hosts[i].fail_next_flush = true;
                note!(self, "DISK FAULT on n{}: its next flush fails", i + 1);
            }
            10 => {
                let i = self.rng_fault.index(n);
                let ticks = self.rng_fault.range(30, 300);
                self.hosts[i].hung_until = self.now + ticks * TICK;
                self.stats.hung_disks += 1;
                note!(
                    self,
                    "HUNG DISK on n{}: no flush returns for {ticks} ticks",
                    i + 1
                );
            }
            _ => {
                let f = self.options.faults;
                if f.drop {
                    self.network.drop_rate = [0.0, 0.01, 0.05, 0.2][self.rng_fault.index(4)];
                }
                if f.duplicate {
                    self.network.duplicate_rate = [0.0, 0.01, 0.05][self.rng_fault.index(3)];
                }
                note!(
                    self,
                    "WEATHER: loss {}, duplication {}",
                    self.network.drop_rate,
                    self.network.duplicate_rate
                );
            }
        }
    }

    // ----- the operator -------------------------------------------------------------------

    /// Asks the leader for a membership change or a leadership transfer, then comes back.
    fn operator(&mut self) {
        if !self.operator_on {
            note!(self, "operator (off)");
            return;
        }
        let at = self.now + self.rng_op.range(20, 120) * TICK;
        self.schedule(at, Event::Operator);
        let leader = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.paused_since.is_none())
            .filter_map(|(i, h)| h.node.as_deref().map(|n| (i, n)))
            .filter(|(_, n)| n.role() == Role::Leader)
            .max_by_key(|(_, n)| n.term())
            .map(|(i, n)| (i, n.id(), Membership::of(n)));
        let Some((li, lid, config)) = leader else {
            note!(self, "operator: no leader to ask");
            return;
        };
        let f = self.options.faults;
        let transfer = f.transfer && (!f.membership || self.rng_op.chance(0.4));
        if transfer {
            let others: Vec<NodeId> = config
                .voters
                .iter()
                .copied()
                .filter(|&v| v != lid)
                .collect();
            if others.is_empty() {
                return;
            }
            let target = others[self.rng_op.index(others.len())];
            self.node_input(li, Input::Transfer(target));
            return;
        }
        if let Some(change) = self.pick_change(lid, &config) {
            self.node_input(li, Input::Change(change));
        }
    }

    /// A membership change that makes sense for leader `lid` with configuration `config`.
    /// A node is added only if it runs. Members need not know a node added as a voter, nor
    /// it them: nodes follow leaders and answer candidates outside their configuration.
    fn pick_change(&mut self, lid: NodeId, config: &Membership) -> Option<Change> {
        if !config.outgoing.is_empty() {
            return Some(Change::LeaveJoint);
        }
        let outsiders: Vec<NodeId> = self
            .hosts
            .iter()
            .filter(|h| !config.contains(h.id) && h.paused_since.is_none() && h.node.is_some())
            .map(|h| h.id)
            .collect();
        let voters = &config.voters;
        let learners = &config.learners;
        let pick = |rng: &mut SimRng, v: &[NodeId]| v[rng.index(v.len())];
        let mut options: Vec<Change> = Vec::new();
        if !outsiders.is_empty() {
            options.push(Change::AddLearner(pick(&mut self.rng_op, &outsiders)));
            let o = pick(&mut self.rng_op, &outsiders);
            if voters.len() < 6 && self.rng_op.chance(0.3) {
                options.push(Change::AddVoter(o));
            }
        }
        if !learners.is_empty() {
            let l = pick(&mut self.rng_op, learners);
            if voters.len() < 6 {
                options.push(Change::Promote(l));
            }
            options.push(Change::Remove(l));
        }
        if voters.len() > 3 {
            options.push(Change::Demote(pick(&mut self.rng_op, voters)));
            options.push(Change::Remove(pick(&mut self.rng_op, voters)));
        }
        // Joint consensus to a random configuration of 3 to 5 voters.
        let mut pool: Vec<NodeId> = voters
            .iter()
            .chain(learners)
            .chain(&outsiders)
            .copied()
            .collect();
        pool.sort_unstable();
        for k in (1..pool.len()).rev() {
            let j = self.rng_op.index(k + 1);
            pool.swap(k, j);
        }
        if pool.len() >= 3 {
            let size = (self.rng_op.range(3, 5) as usize).min(pool.len());
            let (new_voters, rest) = pool.split_at(size);
            let new_learners: Vec<NodeId> = rest
                .iter()
                .copied()
                .filter(|&id| config.contains(id) && self.rng_op.chance(0.5))
                .collect();
            options.push(Change::Joint {
                voters: new_voters.to_vec(),
                learners: new_learners,
            });
        }
        let _ = lid;
        if options.is_empty() {
            return None;
        }
        Some(options.swap_remove(self.rng_op.index(options.len())))
    }

    // ----- checks and traces --------------------------------------------------------------

    /// Durability: the committed prefix on a majority of durable images.
    fn check_durable(&mut self) {
        let images = durable_images(&self.hosts);
        self.oracles.check_durable_by(images.into_iter());
    }

    fn storage_violation(&mut self, node: NodeId, what: String) {
        note!(self, "STORAGE CONTRACT BROKEN by n{node}: {what}");
        self.oracles.report(Violation::Storage { node, what });
    }

    fn liveness(&mut self, what: String) {
        if self.has_violation() {
            // The run stopped at a safety violation; that is the finding.
            return;
        }
        note!(self, "LIVENESS VIOLATION: {what}");
        self.oracles.report(Violation::Liveness { what });
    }

    fn harness(&mut self, what: String) {
        note!(self, "SIMULATOR ERROR: {what}");
        self.oracles.report(Violation::Liveness {
            what: format!("simulator error: {what}"),
        });
    }

    /// How long a write (a flush, a snapshot file) of node `i`'s disk takes.
    fn disk_latency(&mut self, i: usize) -> Time {
        let p = self.rng_disk.unit();
        let base = if p < 0.90 {
            self.rng_disk.range(20, 300)
        } else if p < 0.99 {
            self.rng_disk.range(300, 2_000)
        } else {
            self.rng_disk.range(2_000, 10_000)
        };
        if self.hosts[i].slow_until > self.now {
            base + self.rng_disk.range(2_000, 15_000)
        } else {
            base
        }
    }

    /// How long a read of entries or of a snapshot chunk takes: short, or with
    /// `slow-reads` a long tail (so reads complete out of order).
    fn read_latency(&mut self) -> Time {
        if !self.options.faults.slow_reads {
            return self.rng_read.range(10, 200);
        }
        let p = self.rng_read.unit();
        if p < 0.80 {
            self.rng_read.range(10, 300)
        } else if p < 0.95 {
            self.rng_read.range(300, 3_000)
        } else {
            self.rng_read.range(3_000, 30_000)
        }
    }

    /// Whether a read fails (`slow-reads`).
    fn read_fails(&mut self) -> bool {
        self.options.faults.slow_reads && self.rng_read.chance(0.05)
    }

    fn write_trace(&mut self, line: &str) {
        let now = self.now;
        if let Some(w) = self.trace.as_mut() {
            let _ = writeln!(w, "[{:>9}.{:03}ms] {line}", now / 1000, now % 1000);
        }
    }

    fn trace_states(&mut self) {
        let mut s = String::from("    ");
        for (k, h) in self.hosts.iter().enumerate() {
            if k > 0 {
                s.push_str(" | ");
            }
            match &h.node {
                None => {
                    let _ = write!(s, "n{} down", h.id);
                }
                Some(n) => {
                    let role = match n.role() {
                        Role::Follower => "F",
                        Role::PreCandidate => "P",
                        Role::Candidate => "C",
                        Role::Leader => "L",
                    };
                    let paused = if h.paused_since.is_some() {
                        " paused"
                    } else {
                        ""
                    };
                    let kind = match n.members().find(|m| m.id == h.id) {
                        None => "x",
                        Some(m) if m.learner => "~",
                        Some(m) if !m.voter => "-",
                        Some(_) => "",
                    };
                    let _ = write!(
                        s,
                        "n{}{kind} {role} t{} c{} a{} l{} d{}{paused}",
                        h.id,
                        n.term(),
                        n.commit_index(),
                        n.applied_index(),
                        n.last_index(),
                        n.durable_index()
                    );
                    let first = n.log().first_index();
                    if first > 1 {
                        let _ = write!(s, " f{first}");
                    }
                }
            }
        }
        if s != self.last_states {
            if let Some(w) = self.trace.as_mut() {
                let _ = writeln!(w, "{s}");
            }
            self.last_states = s;
        }
    }
}

/// The durable image of every node's disk, by id.
fn durable_images(hosts: &[Host]) -> Vec<(NodeId, &dyn LogView)> {
    hosts
        .iter()
        .map(|h| (h.id, h.disk.durable() as &dyn LogView))
        .collect()
}

/// A memory log for one host: a `VecLog`, a `CachedLog` with a small budget (so reads miss
/// memory), or an `ArrayLog` if the snapshot chunks fit it.
fn random_memory(rng: &mut SimRng, config: &Config) -> MemoryKind {
    match rng.below(10) {
        0..=3 => MemoryKind::Vec,
        4..=6 => MemoryKind::Cached([256, 1024, 4096][rng.index(3)]),
        _ if config.max_snapshot_chunk_bytes <= ARRAY_CHUNK_BYTES => MemoryKind::Array,
        _ => MemoryKind::Cached(1024),
    }
}

/// A random node configuration: what varies between seeds besides faults.
fn random_config(rng: &mut SimRng, faults: &crate::sim::Faults) -> Config {
    let mut c = Config::new(0, 0);
    c.election_ticks = 10;
    c.heartbeat_ticks = rng.range(1, 3) as u32;
    c.retransmit_ticks = rng.range(2, 8) as u32;
    c.pre_vote = rng.chance(0.8);
    c.check_quorum = rng.chance(0.8);
    c.max_inflight = rng.range(1, 8) as usize;
    c.max_entries_per_message = [1, 4, 16, 64][rng.index(4)];
    c.max_uncommitted_entries = if rng.chance(0.2) { 8 } else { 4096 };
    c.max_snapshot_chunk_bytes = [8, 32, 4096][rng.index(3)];
    c.keep_entries_behind_snapshot = [0, 0, 5, 30][rng.index(4)];
    // Clock rates differ by up to 130/70 with skew: the lease must leave that margin.
    c.lease_drift_ticks = if faults.skew {
        5
    } else {
        rng.range(1, 3) as u32
    };
    c
}

fn ids(v: &[usize]) -> Vec<usize> {
    v.iter().map(|i| i + 1).collect()
}

fn groups_ids(groups: &[Vec<usize>]) -> Vec<Vec<usize>> {
    groups.iter().map(|g| ids(g)).collect()
}

/// A short description of a message for traces.
pub fn describe(m: &Message<'_>) -> String {
    match m {
        Message::RequestVote(v) => format!(
            "{}(t{} last {}/{})",
            if v.pre_vote { "PreVote" } else { "RequestVote" },
            v.term,
            v.last_log_index,
            v.last_log_term
        ),
        Message::RequestVoteResponse(v) => format!(
            "{}(t{} {})",
            if v.pre_vote {
                "PreVoteResponse"
            } else {
                "VoteResponse"
            },
            v.term,
            if v.vote_granted { "granted" } else { "refused" }
        ),
        Message::AppendEntries(a) => {
            let entries = a.entries.len();
            if entries == 0 {
                format!(
                    "Heartbeat(t{} prev {}/{} commit {})",
                    a.term, a.prev_log_index, a.prev_log_term, a.leader_commit
                )
            } else {
                format!(
                    "Append(t{} prev {}/{} entries {}..={} commit {})",
                    a.term,
                    a.prev_log_index,
                    a.prev_log_term,
                    a.prev_log_index + 1,
                    a.prev_log_index + entries as u64,
                    a.leader_commit
                )
            }
        }
        Message::AppendEntriesResponse(r) => {
            if r.success {
                format!("AppendOk(t{} match {})", r.term, r.index)
            } else {
                format!(
                    "AppendReject(t{} at {} hint {}/{})",
                    r.term, r.index, r.hint_index, r.hint_term
                )
            }
        }
        Message::InstallSnapshot(m) => format!(
            "InstallSnapshot(t{} through {}/{} at {}, {} bytes{})",
            m.term,
            m.last_included_index,
            m.last_included_term,
            m.offset,
            m.data.len(),
            if m.done { ", done" } else { "" }
        ),
        Message::InstallSnapshotResponse(r) => format!(
            "InstallSnapshotResponse(t{} through {} next {}{})",
            r.term,
            r.last_included_index,
            r.next_offset,
            if r.done { ", done" } else { "" }
        ),
        other => format!("{}(t{})", other.kind(), other.term()),
    }
}
