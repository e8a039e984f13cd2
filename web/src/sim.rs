//! The simulation the page shows: the hosts of 3 to 7 real nodes, the network between them,
//! and simulated time, all decided by one seed.
//!
//! Events happen in time order: a message arrives, or a node's timer fires (election
//! timeout, heartbeat, quorum check: the node says when with `ticks_until_deadline`, so a
//! node that waits costs nothing). Each node ticks every [`TICK`] from a phase of its own.
//! Messages take [`LATENCY`] (uniform, drawn from the seeded generator) and never overtake
//! each other on one link. Who hears whom is `coracle-tests`' [`Network`]: a cut link loses
//! what is in flight on it, and links are directed, so a cut may be one-way.

use crate::host::{
    Host, Index, MessageInfo, NodeId, NodeOptions, NodeView, Packet, Refused, Role, Send, Term,
    MAX_NODES,
};
use crate::script::Script;
use coracle_tests::sim::network::Network;
use coracle_tests::sim::rng::SimRng;
use coracle_tests::sim::Faults;
pub use coracle_tests::sim::Time;
use std::collections::VecDeque;
use std::fmt;

/// Simulated time of one tick (10 ms).
pub const TICK: Time = 10_000;
/// The range of a message's latency (10 to 20 ms).
pub const LATENCY: (Time, Time) = (10_000, 20_000);
/// The minimum election timeout, in ticks (150 ms; a follower waits 150 to 300 ms).
pub const ELECTION_TICKS: u32 = 15;
/// Ticks between heartbeats (50 ms).
pub const HEARTBEAT_TICKS: u32 = 5;
/// The fewest nodes a run has.
pub const MIN_NODES: usize = 3;
/// Lines of the event log kept for the page.
const NOTES_KEPT: usize = 14;
/// Lost messages kept for the page to fade out.
const LOST_KEPT: usize = 24;

/// How a run is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Decides every random choice: election jitter, latencies, tick phases.
    pub seed: u64,
    /// Nodes S1 to S`nodes`.
    pub nodes: usize,
    /// S1 to S`voters` form the first configuration; the others start outside it.
    pub voters: usize,
    /// The nodes' configuration.
    pub node: NodeOptions,
    /// Snapshot every this many applied entries (keeping 4 entries behind it), or never.
    pub snapshot_every: Option<u64>,
    /// Per node, the term and the terms of the log entries it starts with (the paper's
    /// figures); empty: every log starts empty.
    pub histories: Vec<(Term, Vec<Term>)>,
    /// Nodes that are down at the start.
    pub down: Vec<NodeId>,
}

impl Options {
    /// `nodes` voters with the defaults: pre-vote and check-quorum on, snapshots every 24
    /// entries.
    pub fn new(seed: u64, nodes: usize) -> Options {
        Options {
            seed,
            nodes,
            voters: nodes,
            node: NodeOptions {
                election_ticks: ELECTION_TICKS,
                heartbeat_ticks: HEARTBEAT_TICKS,
                pre_vote: true,
                check_quorum: true,
                max_entries_per_message: 64,
                keep_entries_behind_snapshot: 4,
            },
            snapshot_every: Some(24),
            histories: Vec::new(),
            down: Vec::new(),
        }
    }
}

/// Why a run cannot start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// Fewer than [`MIN_NODES`] or more than [`MAX_NODES`] nodes.
    NodeCount(usize),
    /// A node refused its configuration.
    Node(Refused),
    /// No scenario has this id.
    UnknownScenario(String),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::NodeCount(n) => write!(
                f,
                "{n} nodes: the model runs {MIN_NODES} to {MAX_NODES} nodes"
            ),
            SetupError::Node(e) => write!(f, "{e}"),
            SetupError::UnknownScenario(id) => write!(f, "there is no scenario \"{id}\""),
        }
    }
}

impl std::error::Error for SetupError {}

/// A message on a link.
#[derive(Clone, Debug)]
pub struct Flight {
    /// Unique in the run.
    pub id: u64,
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// When it left.
    pub sent: Time,
    /// When it arrives.
    pub arrive: Time,
    /// What it is.
    pub info: MessageInfo,
    packet: Packet,
}

impl Flight {
    /// Its fields in a line.
    pub fn text(&self) -> String {
        self.packet.text()
    }
}

/// A message that was lost: its link was cut or its receiver was down.
#[derive(Clone, Debug, PartialEq)]
pub struct Lost {
    /// The message's id (its flight's, or a new one if it never left).
    pub id: u64,
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// Its kind.
    pub kind: &'static str,
    /// How far along the link it was, 0 to 1.
    pub at: f64,
}

/// A line of the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// When.
    pub at: Time,
    /// What happened.
    pub text: String,
}

/// One node's host and its timers.
struct Slot {
    host: Host,
    /// Time of the running node's tick 0.
    epoch: Time,
    /// When the node's next timer fires, while it runs.
    timer: Option<Time>,
    /// The election timer as drawn: when it was set and when it fires (not on a leader).
    election: Option<(Time, Time)>,
}

/// What happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// The flight at this position arrives.
    Deliver(usize),
    /// The timer of the node at this position fires.
    Timer(usize),
    /// The scenario's script wants to look at the cluster.
    Wake,
}

/// The nodes, the network and the clock.
pub struct Sim {
    options: Options,
    now: Time,
    events: u64,
    slots: Vec<Slot>,
    net: Network,
    /// Latest arrival on each link, so messages on a link stay in order.
    last_arrival: Vec<Time>,
    rng: SimRng,
    flights: Vec<Flight>,
    next_id: u64,
    lost: VecDeque<Lost>,
    notes: VecDeque<Note>,
    writes: u64,
    /// Messages sent so far, by kind.
    sent: Vec<(&'static str, u64)>,
    script: Option<Script>,
}

impl Sim {
    /// A run at time 0: every node started (but those in `options.down`), no message sent.
    pub fn new(options: Options, script: Option<Script>) -> Result<Sim, SetupError> {
        let n = options.nodes;
        if !(MIN_NODES..=MAX_NODES).contains(&n) {
            return Err(SetupError::NodeCount(n));
        }
        let mut rng = SimRng::new(options.seed);
        let voters: Vec<NodeId> = (1..=options.voters.min(n) as NodeId).collect();
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let id = i as NodeId + 1;
            let seed = rng.next_u64();
            let host = match options.histories.get(i) {
                Some((term, entries)) => {
                    Host::with_history(id, &voters, options.node, seed, *term, entries)
                }
                None => Host::new(id, &voters, options.node, seed),
            }
            .map_err(SetupError::Node)?;
            slots.push(Slot {
                host,
                epoch: rng.below(TICK),
                timer: None,
                election: None,
            });
        }
        let mut sim = Sim {
            net: Network::new(n, &Faults::NONE),
            last_arrival: vec![0; n * n],
            rng,
            now: 0,
            events: 0,
            slots,
            flights: Vec::new(),
            next_id: 0,
            lost: VecDeque::new(),
            notes: VecDeque::new(),
            writes: 0,
            sent: Vec::new(),
            script,
            options,
        };
        for i in 0..n {
            if sim.options.down.contains(&(i as NodeId + 1)) {
                sim.slots[i].host.crash();
            } else {
                sim.after_input(i);
            }
        }
        sim.poll_script();
        Ok(sim)
    }

    /// The options the run was set up with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Events processed so far (deliveries, timers, script wake-ups).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True for a run without nodes (never: a run has at least [`MIN_NODES`]).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    // ----- time ---------------------------------------------------------------------------

    fn next_event(&self) -> Option<(Time, Event)> {
        // At equal times: deliveries (oldest message first, so a link keeps its order),
        // then timers (lowest id first), then the script.
        let mut best: Option<(Time, Event)> = self
            .flights
            .iter()
            .enumerate()
            .min_by_key(|(_, f)| (f.arrive, f.id))
            .map(|(i, f)| (f.arrive, Event::Deliver(i)));
        let mut consider = |at: Time, event: Event| {
            if best.is_none_or(|(t, _)| at < t) {
                best = Some((at, event));
            }
        };
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(at) = s.timer {
                consider(at, Event::Timer(i));
            }
        }
        if let Some(at) = self.script.as_ref().and_then(Script::wake_at) {
            consider(at.max(self.now), Event::Wake);
        }
        best
    }

    /// When the next event happens, if any is due.
    pub fn next_event_at(&self) -> Option<Time> {
        self.next_event().map(|(at, _)| at)
    }

    /// Processes every event up to time `until`, then sets the clock to it.
    pub fn run_until(&mut self, until: Time) {
        while let Some((at, event)) = self.next_event() {
            if at > until {
                break;
            }
            self.process(at, event);
        }
        self.now = self.now.max(until);
    }

    /// Processes events until `events` have been processed in all, then sets the clock to
    /// `at` (replaying a run up to the moment of a recorded action).
    pub fn run_to_event(&mut self, events: u64, at: Time) {
        while self.events < events {
            let Some((t, event)) = self.next_event() else {
                break;
            };
            self.process(t, event);
        }
        self.now = self.now.max(at);
    }

    /// Processes the next message delivery or timer (and any script wake-up before it);
    /// false if nothing is left to happen.
    pub fn step(&mut self) -> bool {
        while let Some((at, event)) = self.next_event() {
            self.process(at, event);
            if event != Event::Wake {
                return true;
            }
        }
        false
    }

    fn process(&mut self, at: Time, event: Event) {
        self.now = self.now.max(at);
        self.events += 1;
        match event {
            Event::Deliver(i) => {
                let flight = self.flights.swap_remove(i);
                let to = (flight.to - 1) as usize;
                if self.slots[to].host.is_up() {
                    self.sync_clock(to);
                    self.slots[to].host.receive(flight.from, &flight.packet);
                    self.after_input(to);
                } else {
                    self.lose(&flight, 1.0);
                }
            }
            Event::Timer(i) => {
                self.sync_clock(i);
                self.after_input(i);
            }
            Event::Wake => {}
        }
        self.poll_script();
    }

    /// Brings node `i`'s clock to the current time.
    fn sync_clock(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let target = self.now.saturating_sub(slot.epoch) / TICK;
        let ticks = target.saturating_sub(slot.host.ticks());
        slot.host.advance(ticks);
    }

    /// After an input to node `i`: drains it, sends what it asks to send, and sets its
    /// timers.
    fn after_input(&mut self, i: usize) {
        let mut sends = Vec::new();
        let mut notes = Vec::new();
        let slot = &mut self.slots[i];
        slot.host.drain(&mut sends, &mut notes);
        if let Some(every) = self.options.snapshot_every {
            slot.host.maybe_snapshot(every);
        }
        for text in notes {
            self.note(text);
        }
        for send in sends {
            self.transmit(i, send);
        }
        self.set_timer(i);
    }

    fn set_timer(&mut self, i: usize) {
        let now = self.now;
        let slot = &mut self.slots[i];
        let Some(until) = slot.host.ticks_until_deadline() else {
            slot.timer = None;
            slot.election = None;
            return;
        };
        let at = slot.epoch + (slot.host.ticks() + until) * TICK;
        slot.timer = Some(at);
        slot.election = match slot.host.role() {
            Some(Role::Leader) | None => None,
            Some(_) => match slot.election {
                Some((set, fires)) if fires == at => Some((set, fires)),
                _ => Some((now, at)),
            },
        };
    }

    fn transmit(&mut self, from: usize, send: Send) {
        let n = self.slots.len();
        let to = send.to.wrapping_sub(1) as usize;
        let id = self.next_id;
        self.next_id += 1;
        match self
            .sent
            .iter_mut()
            .find(|(kind, _)| *kind == send.info.kind)
        {
            Some((_, count)) => *count += 1,
            None => self.sent.push((send.info.kind, 1)),
        }
        if to >= n || !self.net.can_reach(from, to) {
            self.push_lost(Lost {
                id,
                from: from as NodeId + 1,
                to: send.to,
                kind: send.info.kind,
                at: 0.0,
            });
            return;
        }
        let latency = self.rng.range(LATENCY.0, LATENCY.1);
        let lane = &mut self.last_arrival[from * n + to];
        let arrive = (self.now + latency).max(*lane);
        *lane = arrive;
        self.flights.push(Flight {
            id,
            from: from as NodeId + 1,
            to: send.to,
            sent: self.now,
            arrive,
            info: send.info,
            packet: send.packet,
        });
    }

    fn lose(&mut self, flight: &Flight, at: f64) {
        self.push_lost(Lost {
            id: flight.id,
            from: flight.from,
            to: flight.to,
            kind: flight.info.kind,
            at,
        });
    }

    fn push_lost(&mut self, lost: Lost) {
        if self.lost.len() == LOST_KEPT {
            self.lost.pop_front();
        }
        self.lost.push_back(lost);
    }

    /// Adds a line to the event log.
    pub fn note(&mut self, text: String) {
        if self.notes.len() == NOTES_KEPT {
            self.notes.pop_front();
        }
        self.notes.push_back(Note { at: self.now, text });
    }

    // ----- what happens to the cluster ------------------------------------------------------

    fn slot_of(&self, id: NodeId) -> Option<usize> {
        let i = id.wrapping_sub(1) as usize;
        (i < self.slots.len()).then_some(i)
    }

    /// Crashes node `id`: messages to it are lost until it restarts.
    pub fn crash(&mut self, id: NodeId) -> String {
        let Some(i) = self.slot_of(id) else {
            return format!("there is no node {id}");
        };
        if !self.slots[i].host.is_up() {
            return format!("S{id} is already down");
        }
        let slot = &mut self.slots[i];
        slot.host.crash();
        slot.timer = None;
        slot.election = None;
        let text = format!("S{id} crashed");
        self.note(text.clone());
        text
    }

    /// Restarts node `id` from what its storage kept.
    pub fn restart(&mut self, id: NodeId) -> String {
        let Some(i) = self.slot_of(id) else {
            return format!("there is no node {id}");
        };
        if self.slots[i].host.is_up() {
            return format!("S{id} is already up");
        }
        let text = match self.slots[i].host.restart() {
            Ok(()) => {
                self.slots[i].epoch = self.now;
                self.after_input(i);
                format!("S{id} restarted")
            }
            Err(e) => e.to_string(),
        };
        self.note(text.clone());
        text
    }

    /// Crashes a running node, restarts a crashed one.
    pub fn toggle_node(&mut self, id: NodeId) -> String {
        match self.slot_of(id) {
            Some(i) if self.slots[i].host.is_up() => self.crash(id),
            Some(_) => self.restart(id),
            None => format!("there is no node {id}"),
        }
    }

    /// True if `to` hears `from`.
    pub fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        match (self.slot_of(from), self.slot_of(to)) {
            (Some(a), Some(b)) => self.net.can_reach(a, b),
            _ => false,
        }
    }

    /// Cuts or heals the one-way link `from -> to`.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, up: bool) -> String {
        let (Some(a), Some(b)) = (self.slot_of(from), self.slot_of(to)) else {
            return format!("there is no link S{from}→S{to}");
        };
        if a == b {
            return format!("S{from} always hears itself");
        }
        self.net.set_link(a, b, up);
        self.drop_cut_flights();
        let text = if up {
            format!("link S{from}→S{to} healed")
        } else {
            format!("link S{from}→S{to} cut: S{to} no longer hears S{from}")
        };
        self.note(text.clone());
        text
    }

    /// Cuts the link `from -> to` if it is up, heals it if it is cut.
    pub fn toggle_link(&mut self, from: NodeId, to: NodeId) -> String {
        let up = self.link_up(from, to);
        self.set_link(from, to, !up)
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: NodeId, b: NodeId) {
        self.set_link(a, b, false);
        self.set_link(b, a, false);
    }

    /// Heals both directions between `a` and `b`.
    pub fn heal_both(&mut self, a: NodeId, b: NodeId) {
        self.set_link(a, b, true);
        self.set_link(b, a, true);
    }

    /// Every link up.
    pub fn heal_all(&mut self) -> String {
        self.net.heal();
        let text = "every link healed".to_string();
        self.note(text.clone());
        text
    }

    /// Links up only inside each group.
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        let groups: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.iter().filter_map(|&id| self.slot_of(id)).collect())
            .collect();
        self.net.partition(&groups);
        self.drop_cut_flights();
    }

    /// The partial partition: the first `n - n/2` nodes of `order` connected, each other
    /// node reaching exactly one of them.
    pub fn bridge(&mut self, order: &[NodeId]) {
        let order: Vec<usize> = order.iter().filter_map(|&id| self.slot_of(id)).collect();
        self.net.bridge(&order);
        self.drop_cut_flights();
    }

    fn drop_cut_flights(&mut self) {
        let now = self.now;
        let mut kept = Vec::with_capacity(self.flights.len());
        for f in std::mem::take(&mut self.flights) {
            if self
                .net
                .can_reach((f.from - 1) as usize, (f.to - 1) as usize)
            {
                kept.push(f);
            } else {
                let span = f.arrive.saturating_sub(f.sent).max(1) as f64;
                self.lose(&f, (now.saturating_sub(f.sent) as f64 / span).min(1.0));
            }
        }
        self.flights = kept;
    }

    /// A client writes `key=value` (keys x, y, z in turn) to node `id`.
    pub fn write_to(&mut self, id: NodeId) -> Result<(Index, Term), String> {
        let Some(i) = self.slot_of(id) else {
            return Err(format!("there is no node {id}"));
        };
        self.writes += 1;
        let command = format!(
            "{}={}",
            ["x", "y", "z"][self.writes as usize % 3],
            self.writes
        );
        let result = self.slots[i].host.propose(&command);
        let text = match &result {
            Ok((index, term)) => {
                format!("client: {command} to S{id}, index {index} of term {term}")
            }
            Err(e) => format!("client: {command} refused by S{id}: {e}"),
        };
        self.note(text);
        if result.is_ok() {
            self.after_input(i);
        }
        result.map_err(|e| e.to_string())
    }

    /// A client writes to the leader (the one of the highest term if there are several).
    pub fn write(&mut self) -> String {
        match self.leader() {
            Some(id) => match self.write_to(id) {
                Ok((index, term)) => format!("written to S{id} at index {index} (term {term})"),
                Err(e) => e,
            },
            None => {
                let text = "client: no leader to take the write".to_string();
                self.note(text.clone());
                text
            }
        }
    }

    /// Node `id` starts an election now.
    pub fn campaign(&mut self, id: NodeId) -> Result<(), String> {
        self.on_node(id, |h| h.campaign().map(|_| ()))
    }

    /// The leader `from` hands leadership to `to`.
    pub fn transfer(&mut self, from: NodeId, to: NodeId) -> Result<(), String> {
        self.on_node(from, |h| h.transfer_leadership(to))
    }

    /// The leader `leader` adds `peer` as a learner.
    pub fn add_learner(&mut self, leader: NodeId, peer: NodeId) -> Result<Index, String> {
        self.on_node(leader, |h| h.add_learner(peer))
    }

    /// The leader `leader` makes the learner `peer` a voter.
    pub fn promote(&mut self, leader: NodeId, peer: NodeId) -> Result<Index, String> {
        self.on_node(leader, |h| h.promote(peer))
    }

    fn on_node<T>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Host) -> Result<T, Refused>,
    ) -> Result<T, String> {
        let i = self
            .slot_of(id)
            .ok_or_else(|| format!("there is no node {id}"))?;
        self.sync_clock(i);
        let result = f(&mut self.slots[i].host).map_err(|e| e.to_string());
        self.after_input(i);
        result
    }

    // ----- what the cluster looks like ------------------------------------------------------

    /// Node `id` as drawn.
    pub fn node(&self, id: NodeId) -> Option<NodeView> {
        self.slot_of(id).map(|i| self.slots[i].host.view())
    }

    /// Every node as drawn, S1 first.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.slots.iter().map(|s| s.host.view()).collect()
    }

    /// The running leaders, highest term first.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        let mut leaders: Vec<(NodeId, Term)> = self
            .slots
            .iter()
            .filter(|s| s.host.role() == Some(Role::Leader))
            .map(|s| (s.host.id(), s.host.term()))
            .collect();
        leaders.sort_by_key(|&(id, term)| (std::cmp::Reverse(term), id));
        leaders
    }

    /// The running leader of the highest term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders().first().map(|&(id, _)| id)
    }

    /// Role of node `id`, if it runs.
    pub fn role(&self, id: NodeId) -> Option<Role> {
        self.slot_of(id).and_then(|i| self.slots[i].host.role())
    }

    /// Current term of node `id`.
    pub fn term(&self, id: NodeId) -> Term {
        self.slot_of(id).map_or(0, |i| self.slots[i].host.term())
    }

    /// The messages in flight.
    pub fn flights(&self) -> &[Flight] {
        &self.flights
    }

    /// How many messages of `kind` were sent so far (`AppendEntries`, `TimeoutNow`...).
    pub fn sent(&self, kind: &str) -> u64 {
        self.sent
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, count)| *count)
    }

    /// Messages sent so far, by kind, in the order the kinds first appeared.
    pub fn sent_by_kind(&self) -> &[(&'static str, u64)] {
        &self.sent
    }

    /// The latest lost messages.
    pub fn lost(&self) -> impl Iterator<Item = &Lost> {
        self.lost.iter()
    }

    /// The latest lines of the event log.
    pub fn notes(&self) -> impl Iterator<Item = &Note> {
        self.notes.iter()
    }

    /// The election timer of node `id` as drawn: when it was set and when it fires.
    pub fn election_timer(&self, id: NodeId) -> Option<(Time, Time)> {
        self.slot_of(id).and_then(|i| self.slots[i].election)
    }

    /// The scenario being played, if any.
    pub fn script(&self) -> Option<&Script> {
        self.script.as_ref()
    }

    fn poll_script(&mut self) {
        if let Some(mut script) = self.script.take() {
            script.poll(self);
            self.script = Some(script);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous: an election takes one or two timeouts (150 to 300 ms) plus a few message
    /// round trips; 3 s of simulated time is ten times that.
    const ELECTION_BOUND: Time = 3_000_000;

    fn run_until_leader(sim: &mut Sim) -> NodeId {
        while sim.leader().is_none() && sim.now() < ELECTION_BOUND {
            assert!(sim.step(), "nothing left to happen");
        }
        sim.leader().expect("a leader within the bound")
    }

    #[test]
    fn every_size_elects_a_leader_for_many_seeds() {
        for nodes in MIN_NODES..=MAX_NODES {
            for seed in 0..20 {
                let mut sim = Sim::new(Options::new(seed, nodes), None).unwrap();
                run_until_leader(&mut sim);
            }
        }
    }

    #[test]
    fn node_counts_outside_the_range_are_refused() {
        for nodes in [0, 1, 2, 8, 100] {
            let err = Sim::new(Options::new(1, nodes), None).err();
            assert_eq!(err, Some(SetupError::NodeCount(nodes)));
        }
    }

    fn trace(seed: u64) -> Vec<(Time, Vec<NodeView>)> {
        let mut sim = Sim::new(Options::new(seed, 5), None).unwrap();
        let mut trace = Vec::new();
        for i in 0..400 {
            sim.step();
            if i == 100 {
                sim.write();
            }
            if i == 200 {
                let leader = sim.leader().unwrap_or(1);
                sim.crash(leader);
            }
            trace.push((sim.now(), sim.nodes()));
        }
        trace
    }

    #[test]
    fn the_same_seed_replays_the_same_run() {
        assert_eq!(trace(11), trace(11));
        assert_ne!(trace(11), trace(12));
    }

    #[test]
    fn a_crashed_leader_is_replaced_in_a_higher_term() {
        let mut sim = Sim::new(Options::new(3, 5), None).unwrap();
        let old = run_until_leader(&mut sim);
        let term = sim.term(old);
        sim.crash(old);
        let deadline = sim.now() + ELECTION_BOUND;
        while !sim.leaders().iter().any(|&(_, t)| t > term) && sim.now() < deadline {
            sim.step();
        }
        let (new, new_term) = sim.leaders()[0];
        assert!(new != old && new_term > term);
        sim.restart(old);
        sim.run_until(sim.now() + 1_000_000);
        assert_eq!(sim.role(old), Some(Role::Follower));
        assert_eq!(sim.term(old), new_term);
    }

    #[test]
    fn a_one_way_cut_loses_only_that_direction() {
        let mut sim = Sim::new(Options::new(5, 3), None).unwrap();
        let leader = run_until_leader(&mut sim);
        let follower = if leader == 1 { 2 } else { 1 };
        sim.set_link(leader, follower, false);
        assert!(!sim.link_up(leader, follower) && sim.link_up(follower, leader));
        assert!(sim
            .flights()
            .iter()
            .all(|f| (f.from, f.to) != (leader, follower)));
        sim.run_until(sim.now() + 100_000);
        assert!(sim
            .flights()
            .iter()
            .all(|f| (f.from, f.to) != (leader, follower)));
        assert!(sim.lost().any(|l| (l.from, l.to) == (leader, follower)));
        sim.heal_all();
        assert!(sim.link_up(leader, follower));
    }

    #[test]
    fn writes_commit_on_every_node_and_messages_keep_their_order() {
        let mut sim = Sim::new(Options::new(8, 3), None).unwrap();
        let leader = run_until_leader(&mut sim);
        for _ in 0..5 {
            sim.write();
        }
        let end = sim.now() + 500_000;
        while sim.now() < end && sim.step() {
            let mut flights: Vec<&Flight> = sim.flights().iter().collect();
            flights.sort_by_key(|f| (f.from, f.to, f.id));
            for pair in flights.windows(2) {
                if (pair[0].from, pair[0].to) == (pair[1].from, pair[1].to) {
                    assert!(pair[0].arrive <= pair[1].arrive, "a link keeps its order");
                }
            }
        }
        let leader_view = sim.node(leader).unwrap();
        assert_eq!(leader_view.commit, 6, "the no-op and 5 writes");
        for view in sim.nodes() {
            assert_eq!(view.applied, 6);
            assert_eq!(view.state, leader_view.state);
        }
    }

    #[test]
    fn a_write_without_a_leader_is_refused_with_a_message() {
        let mut sim = Sim::new(Options::new(1, 3), None).unwrap();
        assert_eq!(sim.write(), "client: no leader to take the write");
        assert!(sim.write_to(9).is_err());
        assert_eq!(sim.toggle_node(9), "there is no node 9");
        assert_eq!(sim.toggle_link(1, 9), "there is no link S1→S9");
        assert_eq!(sim.toggle_link(2, 2), "S2 always hears itself");
    }
}
