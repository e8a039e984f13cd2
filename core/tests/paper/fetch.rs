//! Reads that miss memory (issue 16): a node whose memory log holds only its newest
//! entries (`CachedLog`) asks its host for older ones (`Output::Fetch`) to send them to a
//! follower behind, or to apply them after a restart, and goes on once they are handed in.

use coracle::{
    CachedLog, Config, Entry, EntryKind, InstallSnapshot, LogStorage, MemStore, Message, Node,
    NodeId, Output, OwnedMessage, Role,
};

type CachedNode = Node<CachedLog>;

/// Nodes with a memory budget of a few entries, each with its store; messages delivered in
/// order; fetches served from the store at once (or refused, when told).
struct Net {
    nodes: Vec<CachedNode>,
    stores: Vec<MemStore>,
    mail: Vec<(NodeId, NodeId, OwnedMessage)>,
    fetches: usize,
    refuse_fetches: usize,
    applied: Vec<Vec<u64>>,
    /// The most bytes of entry data a node held in memory at once.
    peak_memory: usize,
}

const BUDGET: usize = 4 * (100 + 64);

fn cached_config(id: NodeId) -> Config {
    let mut c = Config::new(id, id);
    c.max_entries_per_message = 4;
    c
}

impl Net {
    fn new(n: u64) -> Net {
        let members: Vec<NodeId> = (1..=n).collect();
        Net {
            nodes: members
                .iter()
                .map(|&id| Node::new(cached_config(id), CachedLog::new(BUDGET), &members).unwrap())
                .collect(),
            stores: members.iter().map(|_| MemStore::new()).collect(),
            mail: Vec::new(),
            fetches: 0,
            refuse_fetches: 0,
            applied: members.iter().map(|_| Vec::new()).collect(),
            peak_memory: 0,
        }
    }

    fn drain(&mut self, i: usize, cut: &[NodeId]) {
        loop {
            let mut ack = None;
            let mut fetch = None;
            let node = &mut self.nodes[i];
            let store = &mut self.stores[i];
            let id = node.id();
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Persist(batch) => {
                        store.persist(&batch.batch());
                        ack = Some(batch.token);
                    }
                    Output::Fetch { from, to } => fetch = Some((from, to)),
                    Output::Send { to, message } if !cut.contains(&to) && !cut.contains(&id) => {
                        self.mail.push((id, to, OwnedMessage::from(&message)))
                    }
                    Output::SendSnapshot {
                        to,
                        message,
                        max_len,
                    } => {
                        let Some((data, done)) = store.snapshot_chunk(
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
                        let m = Message::InstallSnapshot(chunk);
                        self.mail.push((id, to, OwnedMessage::from(&m)));
                    }
                    Output::Apply(e) => self.applied[i].push(e.index),
                    _ => {}
                }
            }
            if let Some(t) = ack {
                node.persisted(t);
            }
            if let Some((from, to)) = fetch {
                self.fetches += 1;
                if self.refuse_fetches > 0 {
                    self.refuse_fetches -= 1;
                    node.fetch_failed();
                } else {
                    node.fetched(store.fetch(from, to));
                }
            }
            self.peak_memory = self.peak_memory.max(node.log().bytes_in_memory());
            if ack.is_none() && fetch.is_none() {
                return;
            }
        }
    }

    /// Ticks every node `ticks` times, delivering everything in between; `cut` nodes
    /// neither send nor receive.
    fn run(&mut self, ticks: u64, cut: &[NodeId]) {
        for _ in 0..ticks {
            for i in 0..self.nodes.len() {
                self.nodes[i].tick();
                self.drain(i, cut);
            }
            while !self.mail.is_empty() {
                for (from, to, m) in std::mem::take(&mut self.mail) {
                    if cut.contains(&to) || cut.contains(&from) {
                        continue;
                    }
                    let k = (to - 1) as usize;
                    self.nodes[k].step(from, m.as_message());
                    self.drain(k, cut);
                }
            }
        }
    }

    fn leader(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.role() == Role::Leader)
            .expect("a leader")
    }

    fn propose(&mut self, count: usize, cut: &[NodeId]) {
        let l = self.leader();
        for k in 0..count {
            let data = [k as u8; 100];
            self.nodes[l].propose(&data).unwrap();
            self.drain(l, cut);
            self.run(1, cut);
        }
    }
}

#[test]
fn a_leader_reads_back_what_a_follower_behind_needs() {
    let mut net = Net::new(3);
    net.nodes[0].campaign();
    net.run(20, &[]);
    assert_eq!(net.leader(), 0);
    // Node 3 is away while 40 entries commit; the leader's memory keeps about 4.
    net.propose(40, &[3]);
    let last = net.nodes[0].last_index();
    assert!(
        net.nodes[0].log().entry(last / 2).is_none(),
        "old entries left memory"
    );
    // Node 3's window went unanswered for `retransmit_ticks`: the leader probed it once
    // from its `matchIndex`, reading back the entries of the probe. No more while away.
    assert!(
        net.fetches <= 1,
        "{} reads back for a silent node",
        net.fetches
    );
    net.run(40, &[]);
    assert_eq!(net.nodes[2].last_index(), last, "node 3 caught up");
    assert_eq!(net.applied[2], (1..=last).collect::<Vec<_>>());
    assert!(
        net.fetches >= 40 / 4,
        "read back in batches: {}",
        net.fetches
    );
    assert!(net.nodes[0].counters().fetches as usize >= net.fetches);
    // Memory stayed bounded by the budget plus the window of entries read back.
    assert!(
        net.peak_memory <= 2 * BUDGET + 200,
        "peak {} for a budget of {BUDGET}",
        net.peak_memory
    );
}

#[test]
fn a_fetch_the_host_cannot_serve_is_asked_again() {
    let mut net = Net::new(3);
    net.nodes[0].campaign();
    net.run(20, &[]);
    net.propose(20, &[3]);
    net.refuse_fetches = 3;
    net.run(40, &[]);
    assert_eq!(net.nodes[2].last_index(), net.nodes[0].last_index());
    assert_eq!(net.nodes[0].counters().fetch_failures, 3);
}

#[test]
fn a_restarted_node_reads_back_what_it_must_apply() {
    let mut net = Net::new(1);
    net.nodes[0].campaign();
    net.run(20, &[]);
    net.propose(12, &[]);
    let last = net.nodes[0].last_index();
    // A restart with a state machine that lost everything: the host fills the memory log
    // with terms only (as a file log does for entries it does not want to read at boot).
    let store = net.stores[0].clone();
    let mut log = CachedLog::new(BUDGET);
    log.set_hard_state(store.hard_state);
    for e in &store.entries {
        match e.kind {
            EntryKind::Membership => log
                .append(&Entry {
                    index: e.index,
                    term: e.term,
                    kind: e.kind,
                    data: &e.data,
                })
                .unwrap(),
            kind => log.append_without_data(e.index, e.term, kind).unwrap(),
        }
    }
    net.nodes[0] = Node::new(cached_config(1), log, &[1]).unwrap();
    net.applied[0].clear();
    net.run(30, &[]);
    // Everything again, in order, then the no-op of the new term.
    assert_eq!(net.applied[0], (1..=last + 1).collect::<Vec<_>>());
    assert!(net.fetches > 0);
}

/// A restart fills a bounded memory log from the store: the terms of every entry, every
/// membership entry, and the data of the newest entries only. A membership entry among the
/// old ones must not force the data of every entry after it into memory (the log would
/// then hold the whole log, not the budget).
#[test]
fn a_restart_keeps_old_membership_entries_without_the_data_after_them() {
    let mut log = CachedLog::new(1000);
    for i in 1..=100u64 {
        if i == 10 {
            log.append(&Entry {
                index: i,
                term: 1,
                kind: EntryKind::Membership,
                data: &[1; 9],
            })
            .unwrap();
        } else {
            log.append_without_data(i, 1, EntryKind::Command)
                .expect("entries without data may follow an old membership entry");
        }
    }
    for i in 101..=102u64 {
        log.append(&Entry {
            index: i,
            term: 2,
            kind: EntryKind::Command,
            data: &[7; 100],
        })
        .unwrap();
    }
    assert_eq!(log.entry(10).map(|e| e.kind), Some(EntryKind::Membership));
    assert!(log.entry(11).is_none() && log.entry(101).is_some());
    assert_eq!(log.term(50), Some(1));
    assert_eq!(log.term(102), Some(2));
    log.release(102);
    assert_eq!(
        log.entry(10).map(|e| e.kind),
        Some(EntryKind::Membership),
        "configurations stay"
    );
}

/// Voters 1 (the leader), 2 and 3, learners 4 and 5, each with a memory log that holds
/// one 100-byte entry read back at a time; learner 5 missed the last 30 entries and
/// learner 4 the last 10 of them, and both are back. Fetches wait in the host (reads
/// slower than the network: see [`answer_reads`]).
fn learners_behind() -> crate::host::Cluster<CachedLog> {
    use crate::host::{default_config, Cluster};
    use coracle::MembershipChange;
    let mut c: Cluster<CachedLog> = Cluster::empty();
    for id in 1..=5 {
        c.add(default_config(id), MemStore::new(), &[1, 2, 3], || {
            CachedLog::new(300)
        });
    }
    c.elect(1);
    for id in [4, 5] {
        c.node_mut(1)
            .change_membership(MembershipChange::AddLearner(id))
            .unwrap();
        c.run(5);
    }
    // (Ticks after each batch: the leader notices that what it sent the learners away
    // was lost, and probes them from what they hold.)
    let propose = |c: &mut Cluster<CachedLog>, count: u8| {
        for k in 0..count {
            c.propose(1, &[k; 100]);
            c.stabilize();
        }
        c.run(20);
    };
    c.isolate(5);
    propose(&mut c, 20);
    c.isolate(4);
    propose(&mut c, 10);
    let last = c.node(1).log().last_index();
    assert_eq!(last - c.node(4).log().last_index(), 10);
    assert_eq!(last - c.node(5).log().last_index(), 30);
    c.manual_fetch.insert(1);
    c.heal();
    c.drain(1);
    c
}

/// Answers the leader's fetches, each once every message sent has arrived, until `done`;
/// returns how many it read.
fn answer_reads(
    c: &mut crate::host::Cluster<CachedLog>,
    done: impl Fn(&crate::host::Cluster<CachedLog>) -> bool,
) -> u64 {
    let before = c.node(1).counters().fetches;
    for tick in 0.. {
        assert!(tick < 200, "not done after {tick} rounds");
        c.stabilize();
        if done(c) {
            break;
        }
        if !c.answer_fetch(1) {
            c.run(1);
        }
    }
    c.node(1).counters().fetches - before
}

/// A leader whose memory holds one entry read back at a time, and a joint configuration
/// whose new voters are behind it at different points (the simulator's seed
/// 811132671461, where four of the five new voters were 80 to 100 entries behind). The
/// commit rule (§5.3, and thesis 4.3 while joint) needs a majority of the new voters: the
/// leader reads back first for the voter closest to its log, so that a majority holds it
/// again after as few reads as that one voter needs. Reads spread over every follower
/// behind restore a majority only once nearly all of them have caught up.
#[test]
fn a_leader_reads_back_first_for_the_voter_closest_to_its_log() {
    let mut c = learners_behind();
    // Both become voters at once: the new configuration {1, 4, 5} needs one of them to
    // hold the log.
    let joint = c
        .node_mut(1)
        .change_membership(coracle::MembershipChange::Joint {
            voters: &[1, 4, 5],
            learners: &[],
        })
        .unwrap();
    c.drain(1);
    let reads = answer_reads(&mut c, |c| c.node(1).commit_index() >= joint.index);
    assert!(
        reads <= 10 + 1,
        "{reads} reads before a majority held the log again; voter 4 needed 10"
    );
    // Then the other catches up too.
    c.manual_fetch.clear();
    while c.answer_fetch(1) {}
    c.run(50);
    assert_eq!(c.node(5).log().last_index(), c.node(1).log().last_index());
}

/// Followers behind that the commit rule does not wait for are caught up furthest behind
/// first: the one ahead waits until the other reaches it, and from then on each entry read
/// back serves both, so the leader reads each entry once, not once for each of them.
#[test]
fn followers_behind_share_what_the_leader_reads_back() {
    let mut c = learners_behind();
    let last = c.node(1).log().last_index();
    let caught_up = |c: &crate::host::Cluster<CachedLog>| {
        [4, 5]
            .iter()
            .all(|&id| c.node(id).log().last_index() == last)
    };
    let reads = answer_reads(&mut c, caught_up);
    assert!(
        reads <= 30 + 1,
        "{reads} reads to catch up learners 30 and 10 entries behind"
    );
}
