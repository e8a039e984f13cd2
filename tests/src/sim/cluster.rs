//! The cluster: hosts around real nodes, the event queue, the nemesis that injects faults,
//! and the oracles checked after every event.

use crate::linearizability::{self, Budget, CheckResult, History, Key, Value};
use crate::oracle::{LogView, Oracles, Violation};
use crate::sim::client::{Client, Reply, Request};
use crate::sim::kv::{Command, Kv};
use crate::sim::network::Network;
use crate::sim::rng::{mix64, SimRng};
use crate::sim::storage::{LogImage, SimLog};
use crate::sim::{Bug, Linearizability, RunReport, SimOptions, Stats, Time, TICK};
use coracle::{
    Config, EntryKind, Index, Message, Node, NodeId, Output, OwnedMessage, Proposal, ProposeError,
    Role, SyncToken, Term,
};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::io::Write;

/// The node type the simulator runs: up to 8 peers (9 nodes), 8 messages in flight per
/// peer.
pub type SimNode = Node<SimLog, 8, 8>;

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
    SyncDone {
        node: usize,
        incarnation: u64,
        token: SyncToken,
        barrier: u64,
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
    Restart {
        node: usize,
        incarnation: u64,
    },
    Resume {
        node: usize,
        pause: u64,
    },
}

struct Scheduled {
    time: Time,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the earliest event is the greatest, for `BinaryHeap`.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
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

/// What surrounds one node: its process state, disk, state machine and clock.
struct Host {
    id: NodeId,
    /// The running node; `None` while crashed.
    node: Option<Box<SimNode>>,
    /// What survived the last crash; `Some` while crashed.
    image: Option<LogImage>,
    incarnation: u64,
    tick_epoch: u64,
    tick_period: Time,
    paused_since: Option<Time>,
    pause_id: u64,
    /// Inputs that arrived while paused.
    inbox: Vec<Event>,
    kv: Kv,
    pending: HashMap<Index, Pending>,
    disk_free_at: Time,
}

/// Role, term and log shape before an input, to see what it changed.
struct Before {
    role: Role,
    term: Term,
    last: Index,
    truncations: u64,
}

impl Before {
    fn of(node: &SimNode) -> Self {
        Before {
            role: node.role(),
            term: node.term(),
            last: node.last_index(),
            truncations: node.log().truncations(),
        }
    }
}

enum Input {
    Tick,
    Advance(u64),
    Step(NodeId, OwnedMessage),
    Synced(SyncToken, u64),
    Request(Request),
    Propose(Vec<u8>),
    Campaign,
}

/// An output of a node, copied out so the node can be used again.
enum Drained {
    State(coracle::StateChange),
    Sync(SyncToken),
    Send(NodeId, OwnedMessage),
    Apply {
        index: Index,
        term: Term,
        command: Option<Command>,
    },
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
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    hosts: Vec<Host>,
    network: Network,
    rng_net: SimRng,
    rng_disk: SimRng,
    rng_fault: SimRng,
    rng_client: SimRng,
    clients: Vec<Client>,
    clients_on: bool,
    nemesis_on: bool,
    history: History,
    oracles: Oracles,
    events: u64,
    stats: Stats,
    trace: Option<Box<dyn Write>>,
    /// The node states last written to the trace.
    last_states: String,
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
        let n = options.nodes.clamp(1, 9);
        let template = options
            .config
            .clone()
            .unwrap_or_else(|| random_config(&mut rng_config));
        let members: Vec<NodeId> = (1..=n as NodeId).collect();
        let faults = options.faults;
        let hosts = members
            .iter()
            .map(|&id| Host {
                id,
                node: None,
                image: Some(LogImage::new()),
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
                disk_free_at: 0,
            })
            .collect();
        let clients = (1..=options.clients as u64).map(Client::new).collect();
        let mut cluster = Cluster {
            seed,
            template,
            oracles: Oracles::new(&members),
            members,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts,
            network: Network::new(n, &faults),
            rng_net,
            rng_disk,
            rng_fault,
            rng_client,
            clients,
            clients_on: false,
            nemesis_on: faults.any_nemesis(),
            history: History::new(),
            events: 0,
            stats: Stats::default(),
            trace,
            last_states: String::new(),
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
            "start: seed {seed}, {n} nodes, faults {}, config {:?}",
            faults,
            cluster.template
        );
        for i in 0..n {
            cluster.start_node(i);
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
        let Some(s) = self.queue.pop() else {
            return false;
        };
        self.now = s.time;
        self.events += 1;
        self.handle(s.event);
        if self.trace.is_some() {
            self.trace_states();
        }
        true
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
        self.heal_everything();
        if self.has_violation() {
            return;
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
            self.liveness(format!(
                "the nodes did not converge on the leader's log within {catch_up} ticks"
            ));
        }
    }

    /// Checks the client history and produces the report of the run.
    pub fn finish(mut self) -> RunReport {
        if !self.has_violation() {
            self.check_durable(None);
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
        self.node_input(i, Input::Propose(command.encode()))
            .unwrap_or(not_leader)
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

    /// A leader followed by a majority (itself included) in its term, if there is one.
    pub fn leader(&self) -> Option<NodeId> {
        let quorum = self.members.len() / 2 + 1;
        self.running().find_map(|l| {
            if l.role() != Role::Leader {
                return None;
            }
            let followers = self
                .running()
                .filter(|n| n.term() == l.term() && n.leader() == Some(l.id()))
                .count();
            (followers >= quorum).then_some(l.id())
        })
    }

    /// Every running node that believes it leads, with its term.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.running()
            .filter(|n| n.role() == Role::Leader)
            .map(|n| (n.id(), n.term()))
            .collect()
    }

    /// True when every node runs, a leader leads, and every node has applied the
    /// leader's whole log.
    pub fn converged(&self) -> bool {
        let Some(l) = self.leader().and_then(|l| self.node(l)) else {
            return false;
        };
        let last = l.last_index();
        l.commit_index() == last
            && self.hosts.iter().all(|h| {
                h.node.as_ref().is_some_and(|n| {
                    n.applied_index() == last && n.log().entry_id(last) == l.log().entry_id(last)
                })
            })
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
        self.queue.peek().map(|s| s.time)
    }

    // ----- the event loop -----------------------------------------------------------------

    fn schedule(&mut self, time: Time, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time,
            seq: self.seq,
            event,
        });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { node, epoch } => {
                let h = &self.hosts[node];
                if h.node.is_none() || h.paused_since.is_some() || h.tick_epoch != epoch {
                    return;
                }
                let period = h.tick_period;
                note!(self, "tick n{}", h.id);
                self.node_input(node, Input::Tick);
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
            Event::SyncDone {
                node,
                incarnation,
                token,
                barrier,
            } => {
                let h = &mut self.hosts[node];
                if h.incarnation != incarnation || h.node.is_none() {
                    note!(self, "fsync of n{} lost in a crash", node + 1);
                    return;
                }
                if h.paused_since.is_some() {
                    note!(self, "fsync of n{} done, held (paused)", node + 1);
                    let h = &mut self.hosts[node];
                    h.inbox.push(Event::SyncDone {
                        node,
                        incarnation,
                        token,
                        barrier,
                    });
                    return;
                }
                note!(
                    self,
                    "fsync done n{} token {} (writes through {barrier})",
                    h.id,
                    token.0
                );
                self.node_input(node, Input::Synced(token, barrier));
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

    /// Feeds one input to node `i`, then runs the oracles and handles every output.
    fn node_input(&mut self, i: usize, input: Input) -> Option<Result<Proposal, ProposeError>> {
        let mut node = self.hosts[i].node.take()?;
        let before = Before::of(&node);
        let mut result = None;
        let mut synced = false;
        match input {
            Input::Tick => node.tick(),
            Input::Advance(ticks) => node.advance(ticks),
            Input::Step(from, message) => node.step(from, message.as_message()),
            Input::Synced(token, barrier) => {
                node.log_mut().flush_through(barrier);
                node.synced(token);
                synced = true;
            }
            Input::Request(request) => self.serve(i, &mut node, request),
            Input::Propose(command) => result = Some(node.propose(&command)),
            Input::Campaign => node.campaign(),
        }
        self.after_input(i, &mut node, before);
        if synced {
            self.check_durable(Some(&node));
        }
        self.hosts[i].node = Some(node);
        result
    }

    /// A client request reached node `i`.
    fn serve(&mut self, i: usize, node: &mut SimNode, request: Request) {
        let (seq, attempt) = (request.command.seq, request.attempt);
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

    /// The oracles, then every output of the node.
    fn after_input(&mut self, i: usize, node: &mut SimNode, before: Before) {
        let id = node.id();
        if node.log().has_appended() {
            for (index, entry) in node.log_mut().take_appended() {
                self.oracles.appended(id, index, entry);
            }
        }
        let (role, term) = (node.role(), node.term());
        if role == Role::Leader {
            if before.role == Role::Leader && before.term == term {
                self.oracles.leader_stepped(
                    id,
                    term,
                    before.last,
                    node.last_index(),
                    node.log().truncations() != before.truncations,
                );
            } else {
                self.oracles.became_leader(id, term, node.log());
            }
        }
        if self
            .oracles
            .commit(id, term, node.commit_index(), node.log())
        {
            if role == Role::Leader {
                self.oracles.check_complete(id, term, node.log());
            }
            for h in &self.hosts {
                if let Some(n) = h.node.as_deref().filter(|n| n.role() == Role::Leader) {
                    self.oracles.check_complete(n.id(), n.term(), n.log());
                }
            }
        }
        self.drain(i, node);
    }

    fn drain(&mut self, i: usize, node: &mut SimNode) {
        let id = node.id();
        loop {
            let drained = match node.poll_output() {
                None => break,
                Some(Output::StateChanged(s)) => Drained::State(s),
                Some(Output::Sync(token)) => Drained::Sync(token),
                Some(Output::Send { to, message }) => {
                    Drained::Send(to, OwnedMessage::from(&message))
                }
                Some(Output::Apply(e)) => Drained::Apply {
                    index: e.index,
                    term: e.term,
                    command: match e.kind {
                        EntryKind::Command => Command::decode(e.data),
                        _ => None,
                    },
                },
                // Reads go through the log in this simulator; other outputs are ignored.
                Some(_) => continue,
            };
            match drained {
                Drained::State(s) => {
                    note!(
                        self,
                        "n{id} is {:?} of term {} (leader {:?})",
                        s.role,
                        s.term,
                        s.leader
                    );
                }
                Drained::Sync(token) => {
                    let barrier = node.log().written();
                    let delay = self.disk_latency();
                    let h = &mut self.hosts[i];
                    let at = (self.now + delay).max(h.disk_free_at);
                    h.disk_free_at = at;
                    let incarnation = h.incarnation;
                    self.schedule(
                        at,
                        Event::SyncDone {
                            node: i,
                            incarnation,
                            token,
                            barrier,
                        },
                    );
                }
                Drained::Send(to, message) => self.send(i, to, message),
                Drained::Apply {
                    index,
                    term,
                    command,
                } => self.apply(i, node, index, term, command),
            }
        }
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
        let Some(entry) = node.log().entry_id(index) else {
            self.harness(format!(
                "node {id} applied entry {index}, which its log lacks"
            ));
            return;
        };
        if node.log().durable().id(index) != Some(entry) {
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

    /// Starts node `i` from its image (the first start, or a restart).
    fn start_node(&mut self, i: usize) {
        let Some(image) = self.hosts[i].image.take() else {
            return;
        };
        let applied = self.hosts[i].kv.applied();
        let config = self.config_for(i, applied);
        let id = self.hosts[i].id;
        match SimNode::new(config, SimLog::from_image(image.clone()), &self.members) {
            Ok(node) => {
                let h = &mut self.hosts[i];
                h.node = Some(Box::new(node));
                h.tick_epoch += 1;
                h.paused_since = None;
                h.disk_free_at = self.now;
                let (epoch, period) = (h.tick_epoch, h.tick_period);
                self.oracles.restarted(id, applied, applied);
                let at = self.now + self.rng_disk.range(1, period);
                self.schedule(at, Event::Tick { node: i, epoch });
            }
            Err(e) => {
                self.hosts[i].image = Some(image);
                self.oracles.report(Violation::RestartFailed {
                    node: id,
                    reason: format!("{e} (state machine applied through {applied})"),
                });
            }
        }
    }

    fn crash_node(&mut self, i: usize) -> Option<u64> {
        let node = self.hosts[i].node.take()?;
        let unsynced = node.log().unsynced() as u64;
        let keep = if self.options.faults.torn && self.rng_fault.chance(0.5) {
            self.rng_fault.range(0, unsynced)
        } else {
            0
        };
        let h = &mut self.hosts[i];
        h.image = Some(node.log().crash(keep as usize));
        h.incarnation += 1;
        h.tick_epoch += 1;
        h.paused_since = None;
        h.inbox.clear();
        h.pending.clear();
        let incarnation = h.incarnation;
        self.stats.crashes += 1;
        note!(
            self,
            "CRASH n{} ({unsynced} unsynced writes, {keep} survive)",
            i + 1
        );
        self.check_durable(None);
        Some(incarnation)
    }

    fn restart_node(&mut self, i: usize) {
        let Some(image) = self.hosts[i].image.as_mut() else {
            return;
        };
        match self.options.bug {
            Some(Bug::VoteAmnesia) => image.forget_vote(),
            Some(Bug::LoseDurable) => image.forget_entries(self.rng_fault.range(1, 3) as usize),
            Some(Bug::StaleReads) | None => {}
        }
        let keep_state_machine = self.rng_fault.chance(0.5);
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
        self.check_durable(None);
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
        self.network.heal();
        self.network.drop_rate = 0.0;
        self.network.duplicate_rate = 0.0;
        note!(self, "HEAL everything: network, crashed and paused nodes");
        for i in 0..self.hosts.len() {
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
        let actions: [(bool, u64); 8] = [
            (!healed, 4),               // heal
            (f.partition && n > 1, 2),  // partition
            (f.asymmetric && n > 1, 1), // one-way cuts
            (f.partial && n > 2, 1),    // partial partition
            (f.crash, 3),               // crash one node
            (f.crash, 1),               // crash every node (cold start)
            (f.pause, 2),               // pause
            (f.drop || f.duplicate, 1), // loss and duplication rates
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

    // ----- checks and traces --------------------------------------------------------------

    /// Durability: the committed prefix on a majority of durable images. `current` is a
    /// node taken out of its host while it handles an input.
    fn check_durable(&mut self, current: Option<&SimNode>) {
        let images = self
            .hosts
            .iter()
            .filter_map(|h| match (&h.node, &h.image) {
                (Some(n), _) => Some(n.log().durable() as &dyn LogView),
                (None, Some(image)) => Some(image as &dyn LogView),
                (None, None) => None,
            })
            .chain(current.map(|n| n.log().durable() as &dyn LogView));
        self.oracles.check_durable(images);
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

    fn disk_latency(&mut self) -> Time {
        let p = self.rng_disk.unit();
        if p < 0.90 {
            self.rng_disk.range(20, 300)
        } else if p < 0.99 {
            self.rng_disk.range(300, 2_000)
        } else {
            self.rng_disk.range(2_000, 10_000)
        }
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
                    let _ = write!(
                        s,
                        "n{} {role} t{} c{} a{} l{} d{}{paused}",
                        h.id,
                        n.term(),
                        n.commit_index(),
                        n.applied_index(),
                        n.last_index(),
                        n.durable_index()
                    );
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

/// A random node configuration: what varies between seeds besides faults.
fn random_config(rng: &mut SimRng) -> Config {
    let mut c = Config::new(0, 0);
    c.election_ticks = 10;
    c.heartbeat_ticks = rng.range(1, 3) as u32;
    c.retransmit_ticks = rng.range(2, 8) as u32;
    c.pre_vote = rng.chance(0.8);
    c.check_quorum = rng.chance(0.8);
    c.max_inflight = rng.range(1, 8) as usize;
    c.max_entries_per_message = [1, 4, 16, 64][rng.index(4)];
    c.max_uncommitted_entries = if rng.chance(0.2) { 8 } else { 4096 };
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
        other => format!("{}(t{})", other.kind(), other.term()),
    }
}
