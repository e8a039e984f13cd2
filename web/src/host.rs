//! The host of one node: the only module of this crate that uses the `coracle` API.
//!
//! It owns a real [`coracle::Node`] with the simplest memory log ([`VecLog`]) and a
//! [`MemStore`] as its disk, feeds it ticks, messages and commands, drains its outputs
//! (every batch of writes is durable at once; committed commands go to the [`Kv`] state
//! machine; snapshots are taken, sent and restored from the store here), and
//! turns what the node says into the plain types below ([`Send`], [`MessageInfo`],
//! [`NodeView`]) that the simulation and the page use. When the core's API changes, this
//! file is what changes.

use crate::kv::Kv;
use coracle::{
    Config, EntryKind, HardState, InstallSnapshot, LogStorage, MemStore, MembershipChange, Message,
    Node, Output, OwnedEntry, OwnedMessage, ProgressState, Role as CoreRole, StateChange, VecLog,
};
use std::fmt;

/// A node's id: 1 to [`MAX_NODES`] in the model.
pub type NodeId = u64;
/// A Raft term.
pub type Term = u64;
/// A position in the log.
pub type Index = u64;

/// The most nodes the model runs.
pub const MAX_NODES: usize = 7;

/// A node of the model: room for every other node as a peer, 8 AppendEntries in flight per
/// peer, one pending read (the model makes none).
type RaftNode = Node<VecLog, MAX_NODES, 8, 1>;

/// How the nodes of a run are configured (the rest is `Config::new`'s defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// The minimum election timeout `T`, in ticks (a follower waits `[T, 2T)`).
    pub election_ticks: u32,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: u32,
    /// Pre-vote before raising the term (thesis 9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within `T` steps down (thesis 6.2).
    pub check_quorum: bool,
    /// Entries in one AppendEntries.
    pub max_entries_per_message: usize,
    /// Entries kept in the log behind a snapshot.
    pub keep_entries_behind_snapshot: u64,
}

/// A node's role as the page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Passive.
    Follower,
    /// Asking whether it could win, without raising its term.
    PreCandidate,
    /// Campaigning in a new term.
    Candidate,
    /// Leading.
    Leader,
}

impl Role {
    /// The name the page uses.
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }

    fn from_core(role: CoreRole) -> Role {
        match role {
            CoreRole::Follower => Role::Follower,
            CoreRole::PreCandidate => Role::PreCandidate,
            CoreRole::Candidate => Role::Candidate,
            CoreRole::Leader => Role::Leader,
        }
    }
}

/// What a node is in the configuration it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Votes.
    Voter,
    /// Receives the log, never votes.
    Learner,
    /// Not in the configuration (yet).
    Outside,
}

impl Membership {
    /// The name the page uses.
    pub fn name(self) -> &'static str {
        match self {
            Membership::Voter => "voter",
            Membership::Learner => "learner",
            Membership::Outside => "outside",
        }
    }
}

/// A message on its way: opaque outside this module.
#[derive(Clone, Debug)]
pub struct Packet(OwnedMessage);

impl Packet {
    /// Its fields in a line, for the page (made only for the messages drawn, not for every
    /// message sent).
    pub fn text(&self) -> String {
        describe(&self.0.as_message())
    }
}

/// What the page shows of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// The kind, as the core names it (`PreVote`, `RequestVote`, `Heartbeat`,
    /// `AppendEntries`, `AppendEntriesResponse`, `InstallSnapshot`, `TimeoutNow`...).
    pub kind: &'static str,
    /// The term it carries.
    pub term: Term,
    /// The terms of the entries an AppendEntries carries.
    pub entries: Vec<Term>,
    /// For an answer: granted, success, or snapshot installed.
    pub ok: Option<bool>,
}

/// A message a node asks to send.
#[derive(Debug)]
pub struct Send {
    /// The receiver.
    pub to: NodeId,
    /// The message.
    pub packet: Packet,
    /// What the page shows of it.
    pub info: MessageInfo,
}

/// One entry of a log, as drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Its term.
    pub term: Term,
    /// `c` a command, `n` a leader's no-op, `m` a membership change.
    pub kind: char,
}

/// A leader's view of one follower (Figure 2's nextIndex and matchIndex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// The follower.
    pub peer: NodeId,
    /// nextIndex.
    pub next: Index,
    /// matchIndex.
    pub matched: Index,
    /// `probe`, `replicate` or `snapshot`.
    pub state: &'static str,
}

/// Everything the page draws of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Running (false: crashed).
    pub up: bool,
    /// Its role (a crashed node is shown by `up`).
    pub role: Role,
    /// currentTerm.
    pub term: Term,
    /// votedFor in the current term.
    pub voted_for: Option<NodeId>,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// commitIndex (0 on a crashed node: it is volatile).
    pub commit: Index,
    /// lastApplied.
    pub applied: Index,
    /// The last index the kept snapshot covers (0: none).
    pub snapshot: Index,
    /// Index of the first entry kept.
    pub first: Index,
    /// The entries `first..`.
    pub log: Vec<LogEntry>,
    /// On a leader: its followers' progress.
    pub progress: Vec<PeerProgress>,
    /// Voter, learner or outside, in the configuration the node uses.
    pub membership: Membership,
    /// The state machine, `x=3 y=1`.
    pub state: String,
}

/// A request the node refused (not the leader, a change under way...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// One node, its disk, its state machine and snapshots.
pub struct Host {
    id: NodeId,
    seed: u64,
    options: NodeOptions,
    /// The voters of the first configuration (the log may hold newer ones).
    voters: Vec<NodeId>,
    /// The running node (`None`: crashed).
    node: Option<Box<RaftNode>>,
    /// Its disk: what survives a crash.
    store: MemStore,
    kv: Kv,
    /// Starts so far (each start draws its election jitter from another seed).
    starts: u64,
    /// The membership last seen while running, shown while the node is down.
    membership: Membership,
}

impl Host {
    /// A running node with an empty log; `voters` is the first configuration.
    pub fn new(
        id: NodeId,
        voters: &[NodeId],
        options: NodeOptions,
        seed: u64,
    ) -> Result<Host, Refused> {
        Host::with_history(id, voters, options, seed, 0, &[])
    }

    /// A running node whose storage already holds `entries` (their terms; each a command)
    /// and `term`, as if it had lived through an earlier history: the paper's figures start
    /// from such logs. Its state was built by hand, so it does not wait out the vote guard
    /// of a restarted node.
    pub fn with_history(
        id: NodeId,
        voters: &[NodeId],
        options: NodeOptions,
        seed: u64,
        term: Term,
        entries: &[Term],
    ) -> Result<Host, Refused> {
        let mut store = MemStore::new();
        store.hard_state = HardState {
            current_term: term,
            voted_for: None,
        };
        for (i, &entry_term) in entries.iter().enumerate() {
            let index = i as Index + 1;
            store.entries.push(OwnedEntry {
                index,
                term: entry_term,
                kind: EntryKind::Command,
                data: format!("{}={index}", ["x", "y", "z"][i % 3]).into_bytes(),
            });
        }
        let mut host = Host {
            id,
            seed,
            options,
            voters: voters.to_vec(),
            node: None,
            store,
            kv: Kv::default(),
            starts: 0,
            membership: Membership::Outside,
        };
        host.start()?;
        if let Some(node) = &mut host.node {
            node.skip_vote_guard();
        }
        Ok(host)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// True while running.
    pub fn is_up(&self) -> bool {
        self.node.is_some()
    }

    /// Crashes the node: its volatile state (role, commit index, state machine, timers)
    /// is gone; its disk stays (every batch of writes was made durable at once).
    pub fn crash(&mut self) {
        self.membership = self.membership();
        if self.node.take().is_some() {
            self.kv = Kv::default();
        }
    }

    /// Restarts a crashed node from its storage. Its clock starts again at tick 0.
    pub fn restart(&mut self) -> Result<(), Refused> {
        if self.is_up() {
            return Ok(());
        }
        self.start()
    }

    fn start(&mut self) -> Result<(), Refused> {
        if self.node.is_some() {
            return Ok(());
        }
        let mut log = VecLog::new();
        self.store
            .recover(&mut log)
            .map_err(|e| Refused(format!("node {} cannot start: {e}", self.id)))?;
        let mut config = Config::new(self.id, self.seed ^ self.starts.wrapping_mul(0x9E37));
        config.election_ticks = self.options.election_ticks;
        config.heartbeat_ticks = self.options.heartbeat_ticks;
        config.retransmit_ticks = self.options.election_ticks / 2;
        config.pre_vote = self.options.pre_vote;
        config.check_quorum = self.options.check_quorum;
        config.max_entries_per_message = self.options.max_entries_per_message;
        config.keep_entries_behind_snapshot = self.options.keep_entries_behind_snapshot;
        self.starts += 1;
        let node = RaftNode::new(config, log, &self.voters)
            .map_err(|e| Refused(format!("node {} cannot start: {e}", self.id)))?;
        self.node = Some(Box::new(node));
        self.kv = Kv::default();
        Ok(())
    }

    /// The role of the running node (`None` while down).
    pub fn role(&self) -> Option<Role> {
        self.node.as_ref().map(|n| Role::from_core(n.role()))
    }

    /// The node's current term (from its disk while down).
    pub fn term(&self) -> Term {
        match &self.node {
            Some(node) => node.term(),
            None => self.store.hard_state.current_term,
        }
    }

    /// Ticks the running node has counted since it started (0 while down).
    pub fn ticks(&self) -> u64 {
        self.node.as_ref().map_or(0, |n| n.now())
    }

    /// `ticks` more ticks pass.
    pub fn advance(&mut self, ticks: u64) {
        if let Some(node) = &mut self.node {
            if ticks > 0 {
                node.advance(ticks);
            }
        }
    }

    /// Ticks until the node's next timer fires (election timeout, heartbeat, quorum check),
    /// or `None` while down.
    pub fn ticks_until_deadline(&self) -> Option<u64> {
        self.node.as_ref().map(|n| n.ticks_until_deadline())
    }

    /// A message arrives from `from` (dropped while down).
    pub fn receive(&mut self, from: NodeId, packet: &Packet) {
        if let Some(node) = &mut self.node {
            node.step(from, packet.0.as_message());
        }
    }

    /// A client's command, on a leader: where it went in the log.
    pub fn propose(&mut self, command: &str) -> Result<(Index, Term), Refused> {
        let node = self.running()?;
        node.propose(command.as_bytes())
            .map(|p| (p.index, p.term))
            .map_err(|e| Refused(e.to_string()))
    }

    /// Starts an election now (as if the election timer had fired).
    pub fn campaign(&mut self) -> Result<(), Refused> {
        self.running()?.campaign();
        Ok(())
    }

    /// On the leader: hand leadership to `target`.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), Refused> {
        self.running()?
            .transfer_leadership(target)
            .map_err(|e| Refused(e.to_string()))
    }

    /// On the leader: add `peer` as a learner.
    pub fn add_learner(&mut self, peer: NodeId) -> Result<Index, Refused> {
        self.change_membership(MembershipChange::AddLearner(peer))
    }

    /// On the leader: make the learner `peer` a voter.
    pub fn promote(&mut self, peer: NodeId) -> Result<Index, Refused> {
        self.change_membership(MembershipChange::Promote(peer))
    }

    fn change_membership(&mut self, change: MembershipChange<'_>) -> Result<Index, Refused> {
        let index = self
            .running()?
            .change_membership(change)
            .map(|p| p.index)
            .map_err(|e| Refused(e.to_string()))?;
        Ok(index)
    }

    fn running(&mut self) -> Result<&mut RaftNode, Refused> {
        let id = self.id;
        self.node
            .as_deref_mut()
            .ok_or_else(|| Refused(format!("node {id} is down")))
    }

    /// Drains the node's outputs: makes every batch of writes durable at once, applies
    /// committed commands, sends snapshot chunks read from the disk, restores snapshots,
    /// and collects the messages to send and a line for each change of role or term.
    pub fn drain(&mut self, sends: &mut Vec<Send>, notes: &mut Vec<String>) {
        let Some(node) = &mut self.node else {
            return;
        };
        loop {
            let mut durable = None;
            while let Some(output) = node.poll_output() {
                match output {
                    Output::StateChanged(change) => notes.push(describe_change(self.id, change)),
                    Output::Persist(batch) => {
                        self.store.persist(&batch.batch());
                        durable = Some(batch.token);
                    }
                    Output::Send { to, message } => sends.push(Send {
                        to,
                        info: info(&message),
                        packet: Packet(OwnedMessage::from(&message)),
                    }),
                    Output::SendSnapshot {
                        to,
                        message,
                        max_len,
                    } => {
                        let index = message.last_included_index;
                        if let Some((data, done)) =
                            self.store.snapshot_chunk(index, message.offset, max_len)
                        {
                            let m = Message::InstallSnapshot(InstallSnapshot {
                                data,
                                done,
                                ..message
                            });
                            sends.push(Send {
                                to,
                                info: info(&m),
                                packet: Packet(OwnedMessage::from(&m)),
                            });
                        }
                    }
                    Output::Apply(entry) if entry.kind == EntryKind::Command => {
                        self.kv.apply(entry.data)
                    }
                    Output::RestoreSnapshot { index, .. } => {
                        self.kv = self
                            .store
                            .snapshot
                            .as_ref()
                            .map(|(_, data)| Kv::decode(data))
                            .unwrap_or_default();
                        notes.push(format!(
                            "S{} restored its state machine from a snapshot through {index}",
                            self.id
                        ));
                    }
                    // A VecLog never misses and never fills up; the model makes no reads.
                    Output::Fetch { .. }
                    | Output::SnapshotNeeded
                    | Output::Apply(_)
                    | Output::ReadReady { .. }
                    | Output::ReadFailed { .. } => {}
                }
            }
            match durable {
                Some(token) => node.persisted(token),
                None => return,
            }
        }
    }

    /// Takes a snapshot of the state machine once `every` entries were applied since the
    /// last one (the log keeps `NodeOptions::keep_entries_behind_snapshot` entries behind
    /// it), so a node that was down long enough gets InstallSnapshot.
    pub fn maybe_snapshot(&mut self, every: u64) {
        let Some(node) = &mut self.node else {
            return;
        };
        let applied = node.applied_index();
        let kept = node.log().snapshot_meta().map_or(0, |m| m.index);
        if applied < kept + every.max(1) {
            return;
        }
        self.store.save_taken(applied, self.kv.encode());
        if node.snapshot_taken(applied).is_err() {
            self.store.taken.clear();
        }
    }

    /// What the node is in the configuration it uses.
    fn membership(&self) -> Membership {
        let Some(node) = &self.node else {
            return self.membership;
        };
        match node.members().find(|m| m.id == self.id) {
            Some(m) if m.voter || m.voter_outgoing => Membership::Voter,
            Some(m) if m.learner => Membership::Learner,
            _ => Membership::Outside,
        }
    }

    /// What the page draws of this node.
    pub fn view(&self) -> NodeView {
        match &self.node {
            Some(node) => {
                let role = Role::from_core(node.role());
                let progress = if role == Role::Leader {
                    node.members()
                        .filter(|m| m.id != self.id)
                        .filter_map(|m| {
                            let p = node.progress(m.id)?;
                            Some(PeerProgress {
                                peer: m.id,
                                next: p.next_index,
                                matched: p.match_index,
                                state: match p.state {
                                    ProgressState::Probe => "probe",
                                    ProgressState::Replicate => "replicate",
                                    ProgressState::Snapshot => "snapshot",
                                },
                            })
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                NodeView {
                    up: true,
                    role,
                    term: node.term(),
                    voted_for: node.voted_for(),
                    leader: node.leader(),
                    commit: node.commit_index(),
                    applied: node.applied_index(),
                    progress,
                    membership: self.membership(),
                    state: self.kv.describe(),
                    ..log_view(node.log())
                }
            }
            None => {
                let mut log = VecLog::new();
                let _ = self.store.recover(&mut log);
                NodeView {
                    membership: self.membership,
                    ..log_view(&log)
                }
            }
        }
    }
}

/// The parts of a view that the storage alone tells (all of a crashed node's).
fn log_view(log: &VecLog) -> NodeView {
    let HardState {
        current_term,
        voted_for,
    } = log.hard_state();
    let first = log.first_index();
    let entries = (first..=log.last_index())
        .filter_map(|i| log.entry(i))
        .map(|e| LogEntry {
            term: e.term,
            kind: match e.kind {
                EntryKind::Command => 'c',
                EntryKind::Noop => 'n',
                EntryKind::Membership => 'm',
            },
        })
        .collect();
    NodeView {
        up: false,
        role: Role::Follower,
        term: current_term,
        voted_for,
        leader: None,
        commit: 0,
        applied: 0,
        snapshot: log.snapshot_meta().map_or(0, |m| m.index),
        first,
        log: entries,
        progress: Vec::new(),
        membership: Membership::Outside,
        state: String::new(),
    }
}

fn describe_change(id: NodeId, change: StateChange) -> String {
    let role = Role::from_core(change.role).name();
    match (change.role, change.leader) {
        (CoreRole::Leader, _) => format!("S{id} became leader in term {}", change.term),
        (_, Some(leader)) => format!("S{id} follows S{leader} in term {} ({role})", change.term),
        _ => format!("S{id} is {role} in term {}", change.term),
    }
}

/// What the page shows of a message, without its text.
fn info(message: &Message<'_>) -> MessageInfo {
    let (entries, ok) = match message {
        Message::AppendEntries(m) => (m.entries.iter().map(|e| e.term).collect(), None),
        Message::RequestVoteResponse(m) => (Vec::new(), Some(m.vote_granted)),
        Message::AppendEntriesResponse(m) => (Vec::new(), Some(m.success)),
        Message::InstallSnapshotResponse(m) => (Vec::new(), Some(m.done)),
        _ => (Vec::new(), None),
    };
    MessageInfo {
        kind: message.kind(),
        term: message.term(),
        entries,
        ok,
    }
}

/// The fields of a message in a line.
fn describe(message: &Message<'_>) -> String {
    match message {
        Message::RequestVote(m) => format!(
            "term {}, last log entry {} of term {}{}",
            m.term,
            m.last_log_index,
            m.last_log_term,
            if m.leadership_transfer {
                " (leadership transfer)"
            } else {
                ""
            }
        ),
        Message::RequestVoteResponse(m) => format!(
            "term {}, {}",
            m.term,
            if m.vote_granted { "granted" } else { "refused" }
        ),
        Message::AppendEntries(m) => format!(
            "term {}, after entry {} of term {}, {} entries, commit {}",
            m.term,
            m.prev_log_index,
            m.prev_log_term,
            m.entries.len(),
            m.leader_commit
        ),
        Message::AppendEntriesResponse(m) if m.success => {
            format!("term {}, holds through {}", m.term, m.index)
        }
        Message::AppendEntriesResponse(m) => format!(
            "term {}, no entry {} of that term (hint: index {}, term {})",
            m.term, m.index, m.hint_index, m.hint_term
        ),
        Message::TimeoutNow(m) => format!("term {}, campaign now", m.term),
        Message::InstallSnapshot(m) => format!(
            "term {}, snapshot through {} (term {}), bytes {}..{}{}",
            m.term,
            m.last_included_index,
            m.last_included_term,
            m.offset,
            m.offset + m.data.len() as u64,
            if m.done { ", the last" } else { "" }
        ),
        Message::InstallSnapshotResponse(m) => {
            format!("term {}, next byte {}", m.term, m.next_offset)
        }
        other => format!("term {}", other.term()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: NodeOptions = NodeOptions {
        election_ticks: 10,
        heartbeat_ticks: 3,
        pre_vote: true,
        check_quorum: true,
        max_entries_per_message: 64,
        keep_entries_behind_snapshot: 1,
    };

    #[test]
    fn a_lone_voter_elects_itself_and_applies_a_write() {
        let mut host = Host::new(1, &[1], OPTIONS, 7).unwrap();
        let (mut sends, mut notes) = (Vec::new(), Vec::new());
        host.advance(host.ticks_until_deadline().unwrap());
        host.drain(&mut sends, &mut notes);
        assert_eq!(host.view().role, Role::Leader, "{notes:?}");
        host.propose("x=5").unwrap();
        host.drain(&mut sends, &mut notes);
        let view = host.view();
        assert_eq!(
            (view.commit, view.applied),
            (2, 2),
            "the no-op and the write"
        );
        assert_eq!(view.state, "x=5");
        assert!(sends.is_empty());
        assert!(
            notes.iter().any(|n| n == "S1 became leader in term 1"),
            "{notes:?}"
        );
    }

    #[test]
    fn a_crash_keeps_the_log_and_term_but_not_the_state_machine() {
        let mut host = Host::new(1, &[1], OPTIONS, 7).unwrap();
        let (mut sends, mut notes) = (Vec::new(), Vec::new());
        host.advance(host.ticks_until_deadline().unwrap());
        host.drain(&mut sends, &mut notes);
        host.propose("x=5").unwrap();
        host.drain(&mut sends, &mut notes);
        host.crash();
        let down = host.view();
        assert!(!down.up);
        assert_eq!((down.term, down.log.len(), down.commit), (1, 2, 0));
        assert_eq!(down.state, "");
        assert!(host.propose("x=6").is_err());
        host.restart().unwrap();
        assert_eq!(host.ticks(), 0, "a restarted node counts ticks from 0");
        host.advance(100);
        host.drain(&mut sends, &mut notes);
        let view = host.view();
        assert_eq!((view.role, view.state.as_str()), (Role::Leader, "x=5"));
    }

    #[test]
    fn a_history_is_loaded_as_the_log() {
        let host = Host::with_history(2, &[1, 2, 3], OPTIONS, 1, 7, &[1, 1, 4]).unwrap();
        let view = host.view();
        assert_eq!(view.term, 7);
        let terms: Vec<Term> = view.log.iter().map(|e| e.term).collect();
        assert_eq!(terms, [1, 1, 4]);
        assert_eq!(view.membership, Membership::Voter);
    }

    #[test]
    fn a_node_outside_the_configuration_says_so() {
        let host = Host::new(4, &[1, 2, 3], OPTIONS, 1).unwrap();
        assert_eq!(host.view().membership, Membership::Outside);
    }

    #[test]
    fn snapshots_compact_the_log_and_restore_the_state_machine() {
        let mut host = Host::new(1, &[1], OPTIONS, 7).unwrap();
        let (mut sends, mut notes) = (Vec::new(), Vec::new());
        host.advance(host.ticks_until_deadline().unwrap());
        host.drain(&mut sends, &mut notes);
        for i in 0..10 {
            host.propose(&format!("k{}={i}", i % 2)).unwrap();
            host.drain(&mut sends, &mut notes);
            host.maybe_snapshot(4);
        }
        let view = host.view();
        assert!(view.snapshot >= 8, "{view:?}");
        assert!(view.first > 1);
        host.crash();
        host.restart().unwrap();
        host.advance(100);
        host.drain(&mut sends, &mut notes);
        assert_eq!(host.view().state, "k0=8 k1=9");
        assert!(notes.iter().any(|n| n.contains("restored")), "{notes:?}");
    }
}
