//! Core bugs the simulator found, each as a minimal test that failed before the fix; kept
//! as regression tests.

use coracle::{
    Config, Entry, EntryKind, HardState, LogStorage, Message, Node, NodeId, Output, OwnedMessage,
    RequestVote, Role, SyncToken, VecLog,
};
use coracle_tests::sim::{run, Faults, SimOptions};

type TestNode = Node<VecLog>;

/// A node whose syncs the test answers by hand (or at once).
struct Host {
    node: TestNode,
    auto_sync: bool,
    unsynced: Option<SyncToken>,
}

impl Host {
    fn new(id: NodeId) -> Self {
        let mut config = Config::new(id, id);
        config.pre_vote = false;
        config.check_quorum = false;
        Host {
            node: Node::new(config, VecLog::new(), &[1, 2, 3]).expect("node"),
            auto_sync: true,
            unsynced: None,
        }
    }

    /// Drains the outputs; returns the messages to send.
    fn drain(&mut self) -> Vec<(NodeId, NodeId, OwnedMessage)> {
        let from = self.node.id();
        let mut out = Vec::new();
        loop {
            match self.node.poll_output() {
                None => break,
                Some(Output::Persist(batch)) => {
                    let token = batch.token;
                    if self.auto_sync {
                        self.node.persisted(token);
                    } else {
                        self.unsynced = Some(token);
                    }
                }
                Some(Output::Send { to, message }) => {
                    out.push((from, to, OwnedMessage::from(&message)))
                }
                Some(_) => {}
            }
        }
        out
    }
}

struct Net {
    hosts: Vec<Host>,
    mail: Vec<(NodeId, NodeId, OwnedMessage)>,
}

impl Net {
    fn new() -> Self {
        Net {
            hosts: (1..=3).map(Host::new).collect(),
            mail: Vec::new(),
        }
    }

    fn host(&mut self, id: NodeId) -> &mut Host {
        &mut self.hosts[id as usize - 1]
    }

    fn collect(&mut self) {
        for h in self.hosts.iter_mut() {
            let out = h.drain();
            self.mail.extend(out);
        }
    }

    /// Delivers messages that `keep` accepts (dropping the others) until none is left.
    fn settle(&mut self, keep: impl Fn(NodeId, NodeId) -> bool) {
        self.collect();
        while !self.mail.is_empty() {
            for (from, to, m) in std::mem::take(&mut self.mail) {
                if keep(from, to) {
                    self.host(to).node.step(from, m.as_message());
                }
            }
            self.collect();
        }
    }

    /// Takes the pending messages from `from` to `to`.
    fn take(&mut self, from: NodeId, to: NodeId) -> Vec<OwnedMessage> {
        self.collect();

        let (mine, rest) = std::mem::take(&mut self.mail)
            .into_iter()
            .partition(|(f, t, _)| (*f, *t) == (from, to));
        self.mail = rest;
        mine.into_iter().map(|(_, _, m)| m).collect()
    }
}

/// Found by `sim --seed 27` (5 nodes, `max_inflight` 1, one entry per message): after a
/// new leader is elected, a follower that was behind is sent the whole log again from
/// index 1, one entry per round trip, so catching up took longer than 200 ticks.
///
/// The leader probes the lagging follower; the follower stores the probe's entries and
/// its answer waits for the fsync. Meanwhile a heartbeat arrives with `prev = matchIndex
/// = 0` (the leader knows nothing of the follower yet), and its answer ("success, index
/// 0") replaces the pending, more informative one (`answer_append` assumes "the newer
/// answer says at least as much", which does not hold here). The leader, in probe state,
/// takes that success as the match point and starts replicating from index 1.
///
/// A second trigger, found by `sim --seed 1073 --steps 100000` (and seed 1143): the probe's
/// rejection is lost, the next heartbeat (`prev = matchIndex = 0`) succeeds, and the
/// leader in probe state again switches to replicating from index 1. With a window of one
/// message of one entry, re-sending 1,200 entries the follower already holds takes longer
/// than the liveness bound, so no client completes an operation in time.
#[test]

fn a_heartbeat_answer_does_not_hide_a_pending_probe_answer() {
    let mut net = Net::new();
    net.host(1).node.campaign();
    net.settle(|_, _| true);
    assert_eq!(net.host(1).node.role(), Role::Leader);
    for i in 0..10u8 {
        net.host(1).node.propose(&[i]).expect("propose");
    }
    net.settle(|_, _| true);
    // Five more entries that node 3 misses.
    for i in 10..15u8 {
        net.host(1).node.propose(&[i]).expect("propose");
    }
    net.settle(|from, to| from != 3 && to != 3);
    let lagging = net.host(3).node.last_index();
    assert!(lagging < net.host(2).node.last_index());

    // Node 2 takes over with node 1's vote (node 3, which heard from the leader
    // recently, ignores the request). Node 1's traffic is left out from here on.
    net.host(2).node.campaign();
    for m in net.take(2, 1) {
        net.host(1).node.step(2, m.as_message());
    }
    for m in net.take(1, 2) {
        net.host(2).node.step(1, m.as_message());
    }
    assert_eq!(net.host(2).node.role(), Role::Leader);
    let leader_last = net.host(2).node.last_index();
    assert!(
        lagging < leader_last,
        "node 3 is behind: {lagging} < {leader_last}"
    );

    // The first probe (after the leader's last entry) is rejected: node 3's log is short.
    for m in net.take(2, 3) {
        net.host(3).node.step(2, m.as_message());
    }
    for m in net.take(3, 2) {
        net.host(2).node.step(3, m.as_message());
    }
    // The second probe carries the missing entries; node 3 stores them, and its answer
    // waits for the fsync.
    net.host(3).auto_sync = false;
    for m in net.take(2, 3) {
        net.host(3).node.step(2, m.as_message());
    }
    assert!(net.take(3, 2).is_empty(), "nothing leaves before the fsync");
    // A heartbeat with prev = matchIndex = 0 arrives before the fsync completes.
    net.host(2).node.tick();
    for m in net.take(2, 3) {
        net.host(3).node.step(2, m.as_message());
    }
    let token = net
        .host(3)
        .unsynced
        .take()
        .expect("node 3 wrote the probe's entries");
    net.host(3).node.persisted(token);
    assert_eq!(net.host(3).node.last_index(), leader_last);
    let answers = net.take(3, 2);
    let best = answers
        .iter()
        .filter_map(|m| match m.as_message() {
            Message::AppendEntriesResponse(r) if r.success => Some(r.index),
            _ => None,
        })
        .max();
    assert_eq!(
        best,
        Some(net.host(3).node.last_index()),
        "node 3 holds entries through {} but only tells the leader {best:?}",
        net.host(3).node.last_index()
    );
}

/// Found by `sim --seed 26 --steps 8000` (5 nodes, pre-vote off): after every fault healed
/// no leader was elected within 200 ticks, while the term climbed from 28 to 51.
///
/// Only nodes 1 and 4 held the most up-to-date log. Nodes 2, 3 and 5, whose logs are
/// behind, kept timing out and campaigning in ever higher terms; each of their vote
/// requests made nodes 1 and 4 adopt the new term through `become_follower`, which resets
/// the election timer, although they refused the vote. With three stale candidates the gap
/// between two requests is almost always shorter than an election timeout, so the only
/// nodes that could win never campaign: a livelock. Figure 2 resets the timer only on an
/// AppendEntries from the current leader or when granting a vote (etcd-style pre-vote
/// hides this, but `pre_vote` is a documented option).
#[test]

fn refusing_a_stale_candidate_does_not_reset_the_election_timer() {
    let mut log = VecLog::new();
    log.append(&Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Command,
        data: b"x",
    })
    .expect("append");
    log.set_hard_state(HardState {
        current_term: 1,
        voted_for: None,
    });
    let mut config = Config::new(1, 1);
    config.pre_vote = false;
    let mut node: Node<VecLog> = Node::new(config, log, &[1, 2, 3]).expect("node");
    node.skip_vote_guard(); // a state built by hand, not a restart after a recent leader
    node.tick();
    node.tick();
    let before = node.ticks_until_deadline();
    // A candidate with an empty log, in a higher term: refused.
    node.step(
        2,
        Message::RequestVote(RequestVote {
            term: 5,
            last_log_index: 0,
            last_log_term: 0,
            pre_vote: false,
            leadership_transfer: false,
        }),
    );
    while node.poll_output().is_some() {}
    assert_eq!(node.term(), 5);
    assert_eq!(node.voted_for(), None, "the stale candidate is refused");
    assert!(
        node.ticks_until_deadline() <= before,
        "the election timer was reset from {before} to {} ticks by a refused vote",
        node.ticks_until_deadline()
    );
}

/// The simulator run that found the livelock above.
#[test]

fn seed_26_elects_a_leader_after_healing() {
    let options = SimOptions {
        steps: 8_000,
        faults: Faults::ALL,
        ..SimOptions::default()
    };
    let report = run(26, &options, None);
    assert!(report.is_ok(), "{report}");
}

/// The long simulator run that hit the second trigger of the first bug.
#[test]

fn seed_1073_clients_progress_after_healing() {
    let options = SimOptions {
        steps: 100_000,
        faults: Faults::ALL,
        ..SimOptions::default()
    };
    let report = run(1073, &options, None);
    assert!(report.is_ok(), "{report}");
}

// ----- found by the simulator's membership, snapshot and read classes (open) -------------

use coracle::ProgressState;
use coracle_tests::sim::{Change, Cluster};

/// Quiet options for hand-driven scenarios: no fault, no client, no operator.
fn quiet(nodes: usize, faults: &str, chunk: usize) -> SimOptions {
    let mut config = Config::new(0, 0);
    config.max_snapshot_chunk_bytes = chunk;
    SimOptions {
        nodes,
        faults: Faults::parse(faults).expect("faults"),
        clients: 0,
        config: Some(config),
        ..SimOptions::default()
    }
}

fn elect(c: &mut Cluster, id: NodeId) {
    c.campaign(id);
    assert!(c.run_until(100, |c| c.leader() == Some(id)), "n{id} leads");
}

fn put_and_commit(c: &mut Cluster, leader: NodeId, key: u64, value: u64) {
    let p = c.put(leader, key, value).expect("proposed");
    assert!(
        c.run_until(100, |c| c
            .node(leader)
            .is_some_and(|n| n.applied_index() >= p.index)),
        "put {key}={value} applied"
    );
}

/// Leader 1 sends node 3 a snapshot (its state machine after puts of `base + k` under the
/// keys `keys`, which node 3 missed, cut off).
fn send_3_a_snapshot(c: &mut Cluster, keys: std::ops::Range<u64>, base: u64) {
    c.partition(&[&[1, 2], &[3]]);
    for k in keys {
        put_and_commit(c, 1, k, base + k);
    }
    c.snapshot(1);
    c.heal();
    assert!(
        c.run_until(50, sending_3_a_snapshot),
        "the leader sends node 3 the snapshot"
    );
}

fn sending_3_a_snapshot(c: &Cluster) -> bool {
    c.node(1)
        .and_then(|n| n.progress(3))
        .is_some_and(|p| p.state == ProgressState::Snapshot)
}

/// Sim seed 67 (`sim --seed 67 --faults all`, before the host worked around it): a leader
/// that takes a new snapshot while it sends an older one to a follower goes on sending
/// chunks under the old snapshot's metadata, read from the new snapshot's bytes
/// (`snapshot_chunk_for`/`install_snapshot_message` never check that
/// `log.snapshot_meta()` is still `snapshot_out`). The follower installs a mix of both and
/// restores a state machine that no node ever had.
#[test]

fn replacing_the_snapshot_during_a_transfer_corrupts_the_followers_state() {
    let mut c = Cluster::new(1, quiet(3, "none", 8), None);
    elect(&mut c, 1);
    for k in 0..3 {
        put_and_commit(&mut c, 1, k, 100 + k);
    }
    send_3_a_snapshot(&mut c, 0..3, 200);
    for _ in 0..6 {
        c.step(); // a few chunks go
    }
    for k in 0..3 {
        let p = c.put(1, k, 300 + k).expect("proposed");
        assert!(c.run_until(5, |c| c
            .node(1)
            .is_some_and(|n| n.applied_index() >= p.index)));
    }
    c.snapshot(1); // same size (same keys), different bytes
    c.run_for_ticks(100);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    for k in 0..3 {
        assert_eq!(c.kv_get(3, k), c.kv_get(1, k), "key {k}");
    }
}

/// Nodes 1-3 with 1 leading; node 4 added as a learner, then promoted to voter, while node 3
/// is cut off (so it still runs the configuration without node 4).
fn voter_4_added_while_3_is_cut_off() -> Cluster {
    let mut c = Cluster::new(1, quiet(3, "membership", 64 * 1024), None);
    c.set_operator(false);
    elect(&mut c, 1);
    put_and_commit(&mut c, 1, 0, 1);
    c.partition(&[&[1, 2, 4], &[3]]);
    c.change_membership(1, Change::AddLearner(4))
        .expect("add learner");
    put_and_commit(&mut c, 1, 0, 2);
    c.run_for_ticks(20);
    c.change_membership(1, Change::Promote(4)).expect("promote");
    put_and_commit(&mut c, 1, 0, 3);
    c
}

/// Sim seeds 6 and 44 (`sim --seeds 100 --faults all`, before the operator avoided it):
/// a member that missed the configuration entry adding a node ignores that node once it
/// leads (`Node::step` drops messages from senders outside the configuration), so it never
/// catches up. Thesis 4.1: servers process incoming RPCs without consulting their
/// configurations.
#[test]

fn a_member_that_missed_a_new_leaders_addition_still_follows_it() {
    let mut c = voter_4_added_while_3_is_cut_off();
    c.transfer_leadership(1, 4).expect("transfer");
    assert!(c.run_until(100, |c| c.leader() == Some(4)), "n4 leads");
    put_and_commit(&mut c, 4, 0, 4);
    c.heal();
    let caught_up = |c: &Cluster| {
        let last = c.node(4).map_or(0, |n| n.last_index());
        c.node(3).is_some_and(|n| n.applied_index() == last)
    };
    assert!(
        c.run_until(300, caught_up),
        "node 3 catches up with leader 4"
    );
}

/// Every install in this run: the core asks the host to restore its state machine from an
/// installed snapshot (`Output::RestoreSnapshot`) before that snapshot is durable, whereas
/// `Output::Apply` waits for durability. A host whose state machine persists and that
/// crashes in between holds a state machine ahead of its durable log and cannot restart
/// (`ConfigError::AppliedBeyondLog`; sim seed 1 before the host worked around it).
#[test]

fn a_snapshot_is_restored_only_once_durable() {
    let mut c = Cluster::new(1, quiet(3, "delay", 64 * 1024), None);
    elect(&mut c, 1);
    c.partition(&[&[1, 2], &[3]]);
    for k in 0..3 {
        put_and_commit(&mut c, 1, k, k);
    }
    c.snapshot(1);
    c.heal();
    assert!(
        c.run_until(100, |c| c.kv_get(3, 2) == Some(2)),
        "node 3 restored"
    );
    let report = c.finish();
    assert!(report.stats.installs > 0, "{report}");
    assert_eq!(report.stats.restores_not_durable, 0, "{report}");
}

/// Thesis 4.1: a member that missed the entry adding a voter must still answer that voter's
/// vote requests. Here node 4 has just become a voter (quorum 3 of 4) and holds an entry
/// that node 2 lacks; leader 1 crashes. Node 2 cannot win (4 refuses it: its log is behind),
/// so node 4 must, and it needs node 3, which still runs the configuration without it.
/// Before the core answered candidates outside its configuration, no leader was ever
/// elected.
#[test]
fn a_member_that_missed_a_new_voters_addition_still_votes_for_it() {
    let mut c = voter_4_added_while_3_is_cut_off();
    c.run_for_ticks(20);
    // An entry only node 4 gets.
    c.partition(&[&[1, 4], &[2], &[3]]);
    let p = c.put(1, 0, 4).expect("proposed");
    assert!(
        c.run_until(50, |c| c.node(4).is_some_and(|n| n.last_index() >= p.index)),
        "node 4 has the entry"
    );
    assert!(c.node(2).is_some_and(|n| n.last_index() < p.index));
    assert!(c.node(3).is_some_and(|n| n.members().all(|m| m.id != 4)));
    c.crash(1);
    c.heal();
    assert!(
        c.run_until(500, |c| c.leader() == Some(4)),
        "node 4 is elected with node 3's vote"
    );
    assert!(
        c.run_until(100, |c| c
            .node(3)
            .is_some_and(|n| n.applied_index() >= p.index)),
        "node 3 follows node 4 and applies its entry"
    );
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

/// Sim seed 4017 (`--nodes 7`): a joint change from voters {1, 2, 3} to {1, 4, 5} with 3 as
/// a learner; the leader, 2, appends the entry leaving the joint configuration and only
/// node 3 gets it. Then 2 crashes. Nodes 2 and 3 now use the new configuration, in which
/// they are no voters, so they never campaign, and they refuse every candidate: their
/// logs are longer.
/// Nodes 1, 4 and 5 still use the joint configuration and need 2 of {1, 2, 3}: no leader
/// is ever elected, even once node 2 is back.
#[test]
fn a_configuration_change_whose_last_entry_only_leaving_voters_hold_still_elects() {
    let mut options = quiet(3, "membership", 64 * 1024);
    if let Some(config) = options.config.as_mut() {
        config.auto_leave_joint = false;
    }
    let mut c = Cluster::new(1, options, None);
    c.set_operator(false);
    elect(&mut c, 2);
    put_and_commit(&mut c, 2, 0, 1);
    for learner in [4, 5] {
        c.change_membership(2, Change::AddLearner(learner))
            .expect("add learner");
        put_and_commit(&mut c, 2, 0, learner);
    }
    c.run_for_ticks(20);
    let joint = c
        .change_membership(
            2,
            Change::Joint {
                voters: vec![1, 4, 5],
                learners: vec![3],
            },
        )
        .expect("joint");
    assert!(
        c.run_until(100, |c| (1..=5).all(|id| c
            .node(id)
            .is_some_and(|n| n.commit_index() >= joint.index))),
        "the joint configuration commits everywhere"
    );
    c.partition(&[&[2, 3], &[1], &[4], &[5]]);
    let leave = c
        .change_membership(2, Change::LeaveJoint)
        .expect("leave joint");
    let durable = |c: &Cluster, id| c.node(id).is_some_and(|n| n.durable_index() >= leave.index);
    assert!(
        c.run_until(50, |c| durable(c, 2) && durable(c, 3)),
        "nodes 2 and 3 hold the entry leaving the joint configuration"
    );
    c.crash(2);
    c.heal();
    c.restart(2);
    assert!(
        c.run_until(500, |c| c.leader().is_some()),
        "a leader is elected"
    );
    let leader = c.leader().expect("a leader");
    put_and_commit(&mut c, leader, 0, 9);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

// ----- found by the simulator's storage faults (issue 16) ---------------------------------

use coracle::{CachedLog, Index, MemStore, OwnedEntry};

/// Restarts a single node on a `CachedLog` of `budget` bytes holding `entries` commands
/// whose data only its store has, and drives it until it applied them all: returns the
/// fetches it asked for.
fn fetches_to_apply_after_restart(budget: usize, entries: Index) -> u64 {
    let mut store = MemStore::new();
    store.hard_state = HardState {
        current_term: 1,
        voted_for: Some(1),
    };
    let mut log = CachedLog::new(budget);
    log.set_hard_state(store.hard_state);
    for index in 1..=entries {
        log.append_without_data(index, 1, EntryKind::Command)
            .expect("append");
        store.entries.push(OwnedEntry {
            index,
            term: 1,
            kind: EntryKind::Command,
            data: vec![index as u8; 40],
        });
    }
    let mut node: Node<CachedLog> = Node::new(Config::new(1, 1), log, &[1]).expect("node");
    let mut applied: Vec<Index> = Vec::new();
    for _ in 0..10 * entries {
        node.tick();
        loop {
            let (mut fetch, mut token) = (None, None);
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Persist(batch) => {
                        store.persist(&batch.batch());
                        token = Some(batch.token);
                    }
                    Output::Fetch { from, to } => fetch = Some((from, to)),
                    Output::Apply(e) => applied.push(e.index),
                    _ => {}
                }
            }
            if let Some(t) = token {
                node.persisted(t);
            }
            match fetch {
                Some((from, to)) => node.fetched(store.fetch(from, to)),
                None if token.is_none() => break,
                None => {}
            }
        }
        if applied.len() as Index > entries {
            break;
        }
    }
    let expected: Vec<Index> = (1..=entries + 1).collect();
    assert_eq!(applied, expected, "every entry applied once, in order");
    node.counters().fetches
}

/// Sim seeds 431 and 470 (`--faults all`, a node on a `CachedLog` of 256 bytes): a node
/// restarted on a log whose data is on disk only applied one entry per many fetches and
/// could not catch up. It asks for the entries it misses from the one it needs (up to a
/// pipeline's worth); the memory log keeps the entries it is handed in a window of half
/// its budget, evicting the oldest to make room for the next, so after the answer only
/// the last few remain, not the one the node needed: it asks again for one entry fewer,
/// and so on, a quadratic number of reads.
#[test]
fn a_small_memory_log_gets_the_entries_it_fetched_in_a_linear_number_of_reads() {
    let fetches = fetches_to_apply_after_restart(256, 60);
    assert!(
        fetches <= 2 * 60,
        "{fetches} fetches to apply 60 entries a window holds one of"
    );
    // A window that holds everything needs one read.
    assert_eq!(fetches_to_apply_after_restart(1 << 20, 60), 1);
}

/// Sim seed 356 (`--faults all`): a follower that restarts in the middle of a snapshot
/// transfer has lost the chunks it was given (a restart forgets the snapshot being
/// received) and answers every chunk with offset 0; the leader only ever moved its
/// acknowledged offset forward, so it kept sending from where the follower had been
/// before the crash, and the follower never caught up.
#[test]
fn a_snapshot_transfer_starts_over_when_the_follower_restarts_in_the_middle() {
    let mut options = quiet(3, "none", 8);
    if let Some(config) = options.config.as_mut() {
        config.max_inflight = 2;
    }
    let mut c = Cluster::new(1, options, None);
    elect(&mut c, 1);
    send_3_a_snapshot(&mut c, 0..20, 0);
    c.run_for_ticks(2); // a few of its 43 chunks of 8 bytes go
    assert!(sending_3_a_snapshot(&c), "still sending");
    c.crash(3);
    c.restart(3);
    assert!(
        c.run_until(300, |c| c.kv_get(3, 19) == Some(19)),
        "node 3 restored the snapshot"
    );
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

/// A leader on a `CachedLog`, its store a `MemStore` whose batches are durable at once.
struct CachedLeader {
    node: Node<CachedLog>,
    store: MemStore,
    /// `(peer, snapshot index)` of every `Output::SendSnapshot` since the last look.
    chunks: Vec<(NodeId, Index)>,
    fetches: Vec<(Index, Index)>,
}

impl CachedLeader {
    fn drain(&mut self) {
        loop {
            let mut token = None;
            while let Some(out) = self.node.poll_output() {
                match out {
                    Output::Persist(batch) => {
                        self.store.persist(&batch.batch());
                        token = Some(batch.token);
                    }
                    Output::SendSnapshot { to, message, .. } => {
                        self.chunks.push((to, message.last_included_index))
                    }
                    Output::Fetch { from, to } => self.fetches.push((from, to)),
                    _ => {}
                }
            }
            match token {
                Some(t) => self.node.persisted(t),
                None => return,
            }
        }
    }

    fn step(&mut self, from: NodeId, message: Message<'_>) {
        self.node.step(from, message);
        self.drain();
    }

    fn append_answer(&mut self, from: NodeId, success: bool, index: Index, hint: Index) {
        let term = self.node.term();
        self.step(
            from,
            Message::AppendEntriesResponse(coracle::AppendEntriesResponse {
                term,
                success,
                index,
                hint_term: 0,
                hint_index: hint,
                round: 0,
            }),
        );
    }
}

/// Sim seed 3207 (`--faults all`, a leader on a `CachedLog` of 256 bytes): a leader that
/// took a new snapshot while it sent an older one to a follower never sent that follower
/// another chunk. Taking the snapshot compacted the entries another follower was waiting
/// for (the leader was fetching them from its disk), so that follower started a transfer
/// first, which set the snapshot being sent without moving the transfers in progress to
/// it; they then waited for chunks of a snapshot no longer sent, for good.
#[test]
fn transfers_in_progress_move_to_a_new_snapshot_whoever_needs_it_first() {
    let mut config = Config::new(1, 1);
    config.pre_vote = false;
    let log = CachedLog::new(0);
    let mut l = CachedLeader {
        node: Node::new(config, log, &[1, 2, 3]).expect("node"),
        store: MemStore::new(),
        chunks: Vec::new(),
        fetches: Vec::new(),
    };
    l.node.campaign();
    l.drain();
    let term = l.node.term();
    l.step(
        2,
        Message::RequestVoteResponse(coracle::RequestVoteResponse {
            term,
            vote_granted: true,
            pre_vote: false,
        }),
    );
    assert_eq!(l.node.role(), Role::Leader);
    for i in 0..20u8 {
        l.node.propose(&[i; 30]).expect("propose");
        l.drain();
    }
    let last = l.node.last_index();
    l.append_answer(2, true, last, 0);
    assert_eq!(l.node.applied_index(), last, "committed and applied");
    // Snapshot 1 through 10; node 3 has nothing: it is sent snapshot 1 (no answer yet).
    l.store.save_taken(10, b"snapshot one".to_vec());
    l.node.snapshot_taken(10).expect("snapshot 1");
    l.drain();
    l.append_answer(3, false, 0, 0);
    assert!(l.chunks.contains(&(3, 10)), "node 3 is sent snapshot 1");
    // Node 2 lost its tail after 14: the leader fetches 15.. from its store to send them.
    l.append_answer(2, false, last, 14);
    assert_eq!(l.fetches.first().map(|f| f.0), Some(15), "{:?}", l.fetches);
    // Node 3 takes a chunk: the leader's next message is to node 3, so node 2 comes first
    // in the next round.
    l.step(
        3,
        Message::InstallSnapshotResponse(coracle::InstallSnapshotResponse {
            term,
            last_included_index: 10,
            next_offset: 4,
            done: false,
        }),
    );
    // Snapshot 2 through the last entry compacts what node 2 waits for.
    l.store.save_taken(last, b"snapshot two".to_vec());
    l.node.snapshot_taken(last).expect("snapshot 2");
    l.chunks.clear();
    l.drain();
    for _ in 0..50 {
        l.node.tick();
        l.drain();
    }
    assert!(l.chunks.contains(&(2, last)), "node 2 is sent snapshot 2");
    assert!(
        l.chunks.contains(&(3, last)),
        "node 3 is sent snapshot 2 too: {:?}",
        l.chunks
    );
}

/// Found while reading sim seed 3521, and again by a soak (seed 872078466487): a node
/// whose fixed-capacity log filled with an old leader's commands was elected with no room
/// for its no-op, so nothing of its term committed, nothing was applied, and the log could
/// never be compacted (its host could snapshot only through what it had applied). The last
/// slots of an `ArrayLog` now take no command: a log holding all the commands it can still
/// takes the new leader's no-op, which commits, and a read is served.
#[test]
fn a_leader_elected_with_a_log_full_of_commands_still_appends_its_no_op() {
    let mut log: coracle::ArrayLog<6, 16> = coracle::ArrayLog::new();
    for index in 1..=4 {
        log.append(&Entry {
            index,
            term: 1,
            kind: EntryKind::Command,
            data: b"x",
        })
        .expect("append");
    }
    let refused = log.append(&Entry {
        index: 5,
        term: 1,
        kind: EntryKind::Command,
        data: b"x",
    });
    assert_eq!(
        refused,
        Err(coracle::StorageError::Full),
        "full of commands"
    );
    log.set_hard_state(HardState {
        current_term: 1,
        voted_for: Some(1),
    });
    let mut config = Config::new(1, 1);
    config.applied = 2;
    let mut node: Node<coracle::ArrayLog<6, 16>> = Node::new(config, log, &[1]).expect("node");
    let mut ready = false;
    let mut drain = |node: &mut Node<coracle::ArrayLog<6, 16>>| loop {
        let mut token = None;
        while let Some(out) = node.poll_output() {
            match out {
                Output::Persist(batch) => token = Some(batch.token),
                Output::ReadReady { .. } => ready = true,
                _ => {}
            }
        }
        match token {
            Some(t) => node.persisted(t),
            None => return,
        }
    };
    node.campaign();
    drain(&mut node);
    assert_eq!(node.role(), Role::Leader);
    node.read(7, coracle::ReadMode::ReadIndex).expect("read");
    for _ in 0..30 {
        node.tick();
        drain(&mut node);
    }
    assert_eq!(node.log().term(node.last_index()), Some(node.term()));
    assert!(node.commit_index() > 4, "the no-op committed");
    assert!(ready, "the read was served");
}
