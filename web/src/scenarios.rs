//! The scenarios of the page: each sets up a cluster, plays a situation of the Raft paper
//! or of a real deployment on the real core, narrates it, and checks at the end that the
//! run is in the state the narration claims. They take the page's seed: every seed plays
//! the same story with its own timings (the unit tests play each one on many seeds).

use crate::host::{Index, NodeId, NodeView, Role, Term};
use crate::script::{after, until, Script, Step, Vars, Verdict};
use crate::sim::{Options, SetupError, Sim};

/// A scenario button of the page.
pub struct Scenario {
    /// Its id (`leader-crash`).
    pub id: &'static str,
    /// Its button's label.
    pub title: &'static str,
    /// What it shows, in a line.
    pub summary: &'static str,
    options: fn(u64) -> Options,
    steps: fn() -> Vec<Step>,
    verdict: Verdict,
}

impl Scenario {
    /// The run of this scenario for `seed`, at time 0.
    pub fn start(&self, seed: u64) -> Result<Sim, SetupError> {
        Sim::new(
            (self.options)(seed),
            Some(Script::new((self.steps)(), self.verdict)),
        )
    }
}

/// Every scenario, in the order of the page's buttons.
pub static SCENARIOS: [Scenario; 12] = [
    Scenario {
        id: "replica-crash",
        title: "Replica crash",
        summary: "A follower crashes, the majority commits on, and it catches up by snapshot.",
        options: with_snapshots,
        steps: replica_crash,
        verdict: replica_crash_verdict,
    },
    Scenario {
        id: "leader-crash",
        title: "Leader crash",
        summary: "The leader crashes; a new one is elected in a higher term.",
        options: five,
        steps: leader_crash,
        verdict: leader_crash_verdict,
    },
    Scenario {
        id: "net-split",
        title: "Network split",
        summary: "The leader ends up in a minority: its write is rolled back after the heal.",
        options: five,
        steps: net_split,
        verdict: net_split_verdict,
    },
    Scenario {
        id: "two-leaders",
        title: "Two leaders",
        summary: "Two leaders at once, in different terms; only one can commit.",
        options: without_check_quorum,
        steps: two_leaders,
        verdict: two_leaders_verdict,
    },
    Scenario {
        id: "node-start",
        title: "Start of one node",
        summary: "A node starts late with an empty log and is brought up to date.",
        options: fifth_down,
        steps: node_start,
        verdict: node_start_verdict,
    },
    Scenario {
        id: "cold-start",
        title: "Cold start",
        summary: "The whole cluster starts, loses power, and starts again from its logs.",
        options: five,
        steps: cold_start,
        verdict: cold_start_verdict,
    },
    Scenario {
        id: "figure-7",
        title: "Figure 7: log repair",
        summary: "The logs of the paper's Figure 7, repaired by the new leader.",
        options: figure_7_logs,
        steps: figure_7,
        verdict: figure_7_verdict,
    },
    Scenario {
        id: "figure-8",
        title: "Figure 8: old terms",
        summary: "Why an entry of an older term is not committed by counting replicas.",
        options: one_entry_per_message,
        steps: figure_8,
        verdict: figure_8_verdict,
    },
    Scenario {
        id: "partial-prevote",
        title: "Partial partition, pre-vote",
        summary: "Two nodes lose the leader but not the cluster; pre-vote keeps the peace.",
        options: five,
        steps: partial_partition,
        verdict: partial_with_pre_vote_verdict,
    },
    Scenario {
        id: "partial-no-prevote",
        title: "Partial partition, no pre-vote",
        summary: "The same without pre-vote: their terms climb and depose the leader.",
        options: without_pre_vote,
        steps: partial_partition,
        verdict: partial_without_pre_vote_verdict,
    },
    Scenario {
        id: "transfer",
        title: "Leadership transfer",
        summary: "The leader hands over to a follower with TimeoutNow.",
        options: five,
        steps: transfer,
        verdict: transfer_verdict,
    },
    Scenario {
        id: "learner",
        title: "Add a learner, promote it",
        summary: "A fourth node joins as a learner, catches up, and becomes a voter.",
        options: three_and_a_spare,
        steps: learner,
        verdict: learner_verdict,
    },
];

/// The scenario with this id.
pub fn find(id: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.id == id)
}

// ----- set-ups ----------------------------------------------------------------------------

fn five(seed: u64) -> Options {
    Options {
        snapshot_every: None,
        ..Options::new(seed, 5)
    }
}

fn with_snapshots(seed: u64) -> Options {
    Options {
        snapshot_every: Some(8),
        ..Options::new(seed, 5)
    }
}

fn without_check_quorum(seed: u64) -> Options {
    let mut o = five(seed);
    o.node.check_quorum = false;
    o
}

fn without_pre_vote(seed: u64) -> Options {
    let mut o = five(seed);
    o.node.pre_vote = false;
    o
}

fn one_entry_per_message(seed: u64) -> Options {
    let mut o = five(seed);
    o.node.max_entries_per_message = 1;
    o
}

fn fifth_down(seed: u64) -> Options {
    Options {
        down: vec![5],
        ..five(seed)
    }
}

fn three_and_a_spare(seed: u64) -> Options {
    Options {
        voters: 3,
        snapshot_every: None,
        ..Options::new(seed, 4)
    }
}

/// Figure 7 of the paper: the leader of term 8 (S1) and the followers (a) to (f) (S2 to S7),
/// every node in term 7.
const FIGURE_7: [&[Term]; 7] = [
    &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6],
    &[1, 1, 1, 4, 4, 5, 5, 6, 6],
    &[1, 1, 1, 4],
    &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    &[1, 1, 1, 4, 4, 4, 4],
    &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
];

fn figure_7_logs(seed: u64) -> Options {
    Options {
        histories: FIGURE_7.iter().map(|log| (7, log.to_vec())).collect(),
        snapshot_every: None,
        ..Options::new(seed, 7)
    }
}

// ----- what the scripts look at -----------------------------------------------------------

fn view(s: &Sim, id: NodeId) -> Option<NodeView> {
    s.node(id)
}

/// The last index of a log.
fn last(v: &NodeView) -> Index {
    v.first + v.log.len() as Index - 1
}

/// The term of entry `index` of a log, if kept.
fn term_at(v: &NodeView, index: Index) -> Option<Term> {
    let offset = index.checked_sub(v.first)?;
    v.log.get(offset as usize).map(|e| e.term)
}

fn last_of(s: &Sim, id: NodeId) -> Index {
    view(s, id).map_or(0, |v| last(&v))
}

fn commit_of(s: &Sim, id: NodeId) -> Index {
    view(s, id).map_or(0, |v| v.commit)
}

fn state_of(s: &Sim, id: NodeId) -> String {
    view(s, id).map_or_else(String::new, |v| v.state)
}

fn holds(s: &Sim, id: NodeId, index: Index, term: Term) -> bool {
    view(s, id).is_some_and(|v| term_at(&v, index) == Some(term))
}

/// A leader that has committed an entry of its own term (so its followers know it).
fn settled(s: &Sim) -> Option<NodeId> {
    let id = s.leader()?;
    let v = view(s, id)?;
    (term_at(&v, v.commit) == Some(v.term)).then_some(id)
}

/// `id` runs, holds everything the leader holds, all committed and applied.
fn caught_up(s: &Sim, id: NodeId, leader: NodeId) -> bool {
    match (view(s, id), view(s, leader)) {
        (Some(v), Some(l)) => {
            v.up && l.up
                && last(&v) == last(&l)
                && term_at(&v, last(&v)) == term_at(&l, last(&l))
                && l.commit == last(&l)
                && v.applied == l.commit
        }
        _ => false,
    }
}

/// The leader `leader` knows that `peer` holds every committed entry (its matchIndex).
fn leader_knows_caught_up(s: &Sim, leader: NodeId, peer: NodeId) -> bool {
    view(s, leader).is_some_and(|l| {
        l.progress
            .iter()
            .any(|p| p.peer == peer && p.matched >= l.commit)
    })
}

/// Every running node holds the same log, all committed and applied.
fn all_agree(s: &Sim) -> bool {
    let views: Vec<NodeView> = s.nodes().into_iter().filter(|v| v.up).collect();
    let Some(first) = views.first() else {
        return false;
    };
    let end = last(first);
    views.iter().all(|v| {
        last(v) == end
            && (v.first.max(first.first)..=end).all(|i| term_at(v, i) == term_at(first, i))
            && v.commit == end
            && v.applied == end
    })
}

/// The running node of lowest id not in `not`.
fn other_than(s: &Sim, not: &[NodeId]) -> NodeId {
    (1..=s.len() as NodeId)
        .find(|id| !not.contains(id) && view(s, *id).is_some_and(|v| v.up))
        .unwrap_or(1)
}

fn others(s: &Sim, not: &[NodeId]) -> Vec<NodeId> {
    (1..=s.len() as NodeId)
        .filter(|id| !not.contains(id))
        .collect()
}

fn names(ids: &[NodeId]) -> String {
    let names: Vec<String> = ids.iter().map(|id| format!("S{id}")).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

fn ensure(ok: bool, claim: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(claim())
    }
}

fn write_many(s: &mut Sim, leader: NodeId, count: usize) -> Index {
    for _ in 0..count {
        let _ = s.write_to(leader);
    }
    last_of(s, leader)
}

/// Waits for a leader that has committed an entry of its term, then acts.
fn when_leader(act: crate::script::Act) -> Step {
    until("a leader", |s, _| settled(s).is_some(), act)
}

/// Remembers the first leader and its term, and writes `count` commands through it (the
/// last index in `v.index`).
fn lead_and_write(s: &mut Sim, v: &mut Vars, count: usize) {
    first_leader(s, v);
    v.index = write_many(s, v.a, count);
}

/// Remembers the first leader and its term, and says how it was elected.
fn first_leader(s: &mut Sim, v: &mut Vars) -> String {
    v.a = settled(s).unwrap_or(1);
    v.term = s.term(v.a);
    format!(
        "S{} was elected leader of term {}: its election timer ran out first, it won a \
         pre-vote, then the vote, and its no-op entry committed.",
        v.a, v.term
    )
}

// ----- replica crash ----------------------------------------------------------------------

fn replica_crash() -> Vec<Step> {
    vec![
        when_leader(first_leader),
        after(150, |s, v| {
            v.b = other_than(s, &[v.a]);
            s.crash(v.b);
            format!(
                "S{} (a follower) crashes. Four nodes are still a majority of five: the \
                 leader goes on committing.",
                v.b
            )
        }),
        after(50, |s, v| {
            v.index = write_many(s, v.a, 12);
            format!(
                "Twelve writes go to S{}. Every node snapshots its state machine every 8 \
                 entries and drops the log behind it, so what S{} misses is soon gone from \
                 the leader's log.",
                v.a, v.b
            )
        }),
        until(
            "the writes to commit",
            |s, v| commit_of(s, v.a) >= v.index,
            |s, v| {
                s.restart(v.b);
                format!(
                    "The writes are committed through index {}. S{} restarts with the term, \
                     vote and log it kept; its commit index and state machine were in memory \
                     and are gone.",
                    v.index, v.b
                )
            },
        ),
        until(
            "the restarted follower to catch up",
            |s, v| caught_up(s, v.b, v.a),
            |s, v| {
                format!(
                    "S{a} probed where S{b}'s log ends; the entries it needed were compacted \
                     away, so S{a} sent its snapshot (InstallSnapshot), then the rest. S{b} \
                     has applied everything: {}.",
                    state_of(s, v.b),
                    a = v.a,
                    b = v.b
                )
            },
        ),
    ]
}

fn replica_crash_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    ensure(s.leaders() == [(v.a, v.term)], || {
        format!("S{} should still lead term {}", v.a, v.term)
    })?;
    ensure(caught_up(s, v.b, v.a), || {
        format!("S{} should be caught up", v.b)
    })?;
    ensure(state_of(s, v.b) == state_of(s, v.a), || {
        "the state machines should agree".into()
    })?;
    ensure(s.sent("InstallSnapshot") > 0, || {
        "no snapshot was sent".into()
    })
}

// ----- leader crash -----------------------------------------------------------------------

fn leader_crash() -> Vec<Step> {
    vec![
        when_leader(first_leader),
        after(100, |s, v| {
            s.crash(v.a);
            format!(
                "S{} crashes. Its followers stop hearing heartbeats; each waits out its own \
                 random election timeout (the shrinking arcs).",
                v.a
            )
        }),
        until(
            "a new leader",
            |s, v| s.leaders().iter().any(|&(_, t)| t > v.term),
            |s, v| {
                v.b = s.leader().unwrap_or(1);
                format!(
                    "S{} timed out first, won a pre-vote and a vote from a majority, and \
                     leads term {}.",
                    v.b,
                    s.term(v.b)
                )
            },
        ),
        after(50, |s, v| {
            v.index = write_many(s, v.b, 2);
            format!(
                "Clients write to S{}; the writes commit on four nodes.",
                v.b
            )
        }),
        after(250, |s, v| {
            s.restart(v.a);
            format!(
                "S{} restarts. It still has term {} and its log; the first heartbeat of S{} \
                 carries a higher term, so it follows S{} and receives the entries it missed.",
                v.a, v.term, v.b, v.b
            )
        }),
        until(
            "the old leader to catch up",
            |s, v| caught_up(s, v.a, v.b) && all_agree(s),
            |s, v| {
                format!(
                    "S{} is a follower of S{} in term {}, with the whole log applied: {}.",
                    v.a,
                    v.b,
                    s.term(v.b),
                    state_of(s, v.a)
                )
            },
        ),
    ]
}

fn leader_crash_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    let leaders = s.leaders();
    ensure(leaders.len() == 1 && leaders[0].0 == v.b, || {
        format!("S{} should be the only leader", v.b)
    })?;
    ensure(v.b != v.a && leaders[0].1 > v.term, || {
        "the new leader should be another node, in a higher term".into()
    })?;
    let old = view(s, v.a).ok_or("no old leader")?;
    ensure(
        old.role == Role::Follower && old.leader == Some(v.b) && old.term == leaders[0].1,
        || format!("S{} should follow S{}", v.a, v.b),
    )?;
    ensure(all_agree(s), || "the logs should agree".into())
}

// ----- network split ----------------------------------------------------------------------

fn net_split() -> Vec<Step> {
    vec![
        when_leader(|s, v| {
            first_leader(s, v);
            v.b = other_than(s, &[v.a]);
            v.group = others(s, &[v.a, v.b]);
            s.partition(&[vec![v.a, v.b], v.group.clone()]);
            format!(
                "S{} leads term {}. The network splits: S{} and S{} on one side (2 of 5, a \
                 minority), {} on the other.",
                v.a,
                v.term,
                v.a,
                v.b,
                names(&v.group)
            )
        }),
        after(20, |s, v| {
            v.index = s.write_to(v.a).map_or(0, |(index, _)| index);
            format!(
                "A client writes to S{}. It appends the entry at index {} (term {}) but can \
                 reach only S{}: two copies of five are not a majority, the entry stays \
                 uncommitted.",
                v.a, v.index, v.term, v.b
            )
        }),
        until(
            "the majority to elect a leader",
            |s, v| {
                s.leaders()
                    .iter()
                    .any(|&(id, t)| t > v.term && v.group.contains(&id))
            },
            |s, v| {
                v.c = s.leader().unwrap_or(1);
                v.other = write_many(s, v.c, 2);
                format!(
                    "The majority side heard no heartbeat, timed out and elected S{} in term \
                     {}. It takes two writes and commits them with its three nodes.",
                    v.c,
                    s.term(v.c)
                )
            },
        ),
        until(
            "the old leader to step down",
            |s, v| commit_of(s, v.c) >= v.other && s.role(v.a) != Some(Role::Leader),
            |_, v| {
                format!(
                    "S{} has not heard from a majority for an election timeout \
                     (check-quorum): it stepped down. Its entry at index {} is still there, \
                     uncommitted.",
                    v.a, v.index
                )
            },
        ),
        after(100, |s, _| {
            s.heal_all();
            "The network heals.".into()
        }),
        until(
            "the logs to agree",
            |s, v| all_agree(s) && view(s, v.a).is_some_and(|x| x.commit >= v.index),
            |s, v| {
                format!(
                    "S{} learns term {} from S{}. Its entry at index {} (term {}) conflicts \
                     with the leader's and is replaced: the uncommitted write is rolled back. \
                     Every node holds the same log: {}.",
                    v.a,
                    s.term(v.c),
                    v.c,
                    v.index,
                    v.term,
                    state_of(s, v.a)
                )
            },
        ),
    ]
}

fn net_split_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    ensure(all_agree(s), || "the logs should agree".into())?;
    let old = view(s, v.a).ok_or("no old leader")?;
    ensure(
        v.index > 0 && term_at(&old, v.index) != Some(v.term),
        || format!("the entry at index {} should have been replaced", v.index),
    )?;
    ensure(s.leaders().first().map(|l| l.0) == Some(v.c), || {
        format!("S{} should lead", v.c)
    })
}

// ----- two leaders ------------------------------------------------------------------------

fn two_leaders() -> Vec<Step> {
    vec![
        when_leader(|s, v| {
            first_leader(s, v);
            v.b = other_than(s, &[v.a]);
            v.group = others(s, &[v.a, v.b]);
            s.partition(&[vec![v.a, v.b], v.group.clone()]);
            format!(
                "S{} leads term {}. Check-quorum is off in this run, so a leader does not \
                 notice that it lost its majority. The network splits: S{} and S{} | {}.",
                v.a,
                v.term,
                v.a,
                v.b,
                names(&v.group)
            )
        }),
        until(
            "the majority to elect a leader",
            |s, v| {
                s.leaders()
                    .iter()
                    .any(|&(id, t)| t > v.term && v.group.contains(&id))
            },
            |s, v| {
                v.c = s.leader().unwrap_or(1);
                format!(
                    "S{} is elected in term {} while S{} still leads term {}: two leaders at \
                     once, in different terms. Raft allows at most one leader per term \
                     (Election Safety), not one per cluster.",
                    v.c,
                    s.term(v.c),
                    v.a,
                    v.term
                )
            },
        ),
        after(30, |s, v| {
            v.index = s.write_to(v.a).map_or(0, |(index, _)| index);
            v.other = s.write_to(v.c).map_or(0, |(index, _)| index);
            format!(
                "A client writes to each leader: S{} at index {}, S{} at index {}.",
                v.a, v.index, v.c, v.other
            )
        }),
        until(
            "the majority's write to commit",
            |s, v| commit_of(s, v.c) >= v.other,
            |_, v| {
                format!(
                    "S{}'s write commits (3 of 5 hold it); S{}'s never can (2 of 5). Heal the \
                     links (Heal all) to see S{} step down on the higher term and lose its \
                     write.",
                    v.c, v.a, v.a
                )
            },
        ),
    ]
}

fn two_leaders_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    let leaders = s.leaders();
    ensure(leaders.len() == 2, || {
        format!("two leaders expected, not {leaders:?}")
    })?;
    ensure(
        leaders.contains(&(v.a, v.term)) && leaders.iter().any(|&(id, t)| id == v.c && t > v.term),
        || format!("S{} and S{} should both lead, in different terms", v.a, v.c),
    )?;
    ensure(commit_of(s, v.a) < v.index, || {
        format!("S{}'s write should be uncommitted", v.a)
    })?;
    ensure(commit_of(s, v.c) >= v.other, || {
        format!("S{}'s write should be committed", v.c)
    })
}

// ----- start of one node ------------------------------------------------------------------

fn node_start() -> Vec<Step> {
    vec![
        when_leader(|s, v| {
            lead_and_write(s, v, 5);
            format!(
                "S5 is switched off. The other four elected S{} in term {} (3 of 5 is a \
                 majority) and commit five writes.",
                v.a, v.term
            )
        }),
        until(
            "the writes to commit",
            |s, v| commit_of(s, v.a) >= v.index,
            |s, _| {
                s.restart(5);
                "S5 starts for the first time, with an empty log, a follower in term 0.".into()
            },
        ),
        until(
            "S5 to catch up",
            |s, v| caught_up(s, 5, v.a),
            |s, v| {
                format!(
                    "The first heartbeat told S5 the term and the leader. S5 rejected it (no \
                     entry before it) with the hint that its log is empty, so S{} moved \
                     nextIndex back to 1 and streamed the entries: S5 holds the whole log and \
                     applied it: {}.",
                    v.a,
                    state_of(s, 5)
                )
            },
        ),
    ]
}

fn node_start_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    ensure(s.leaders() == [(v.a, v.term)], || {
        format!("S{} should still lead term {}", v.a, v.term)
    })?;
    let five = view(s, 5).ok_or("no S5")?;
    ensure(
        five.role == Role::Follower && five.leader == Some(v.a),
        || format!("S5 should follow S{}", v.a),
    )?;
    ensure(caught_up(s, 5, v.a), || "S5 should be caught up".into())
}

// ----- cold start -------------------------------------------------------------------------

fn cold_start() -> Vec<Step> {
    vec![
        when_leader(|s, v| {
            lead_and_write(s, v, 3);
            format!(
                "All five nodes started at once with empty logs. S{} won term {} and takes \
                 three writes.",
                v.a, v.term
            )
        }),
        until(
            "the writes to be applied everywhere",
            |s, v| all_agree(s) && commit_of(s, v.a) >= v.index,
            |s, v| {
                v.text = state_of(s, v.a);
                for id in 1..=s.len() as NodeId {
                    s.crash(id);
                }
                "Power cut: every node crashes at once.".into()
            },
        ),
        after(300, |s, _| {
            for id in 1..=s.len() as NodeId {
                s.restart(id);
            }
            "Power is back: all five restart together. Terms, votes and logs were on \
             disk; commit indexes and state machines were not, so nothing is applied yet. \
             A restarted node ignores vote requests for an election timeout."
                .into()
        }),
        until(
            "a leader in a higher term, and every write applied again",
            |s, v| {
                settled(s).is_some_and(|l| s.term(l) > v.term)
                    && all_agree(s)
                    && commit_of(s, v.a) >= v.index
            },
            |s, v| {
                v.b = s.leader().unwrap_or(1);
                format!(
                    "S{} is elected in term {}. Its no-op commits, and with it every entry \
                     before it: each node applies the log again and reaches the same state: \
                     {}.",
                    v.b,
                    s.term(v.b),
                    state_of(s, v.b)
                )
            },
        ),
    ]
}

fn cold_start_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    let before = &v.text;
    ensure(settled(s).is_some_and(|l| s.term(l) > v.term), || {
        format!("a leader of a term above {} should lead", v.term)
    })?;
    ensure(all_agree(s), || "the logs should agree".into())?;
    for id in 1..=s.len() as NodeId {
        ensure(&state_of(s, id) == before, || {
            format!("S{id} should be back at {before}")
        })?;
    }
    Ok(())
}

// ----- Figure 7 ---------------------------------------------------------------------------

fn figure_7() -> Vec<Step> {
    vec![
        after(0, |s, _| {
            let _ = s.campaign(1);
            "The logs of Figure 7, all nodes in term 7. S1 holds the leader's log; S2 to S7 \
             are the followers (a) to (f): some miss entries, (c) and (d) hold extra \
             uncommitted ones, (f) holds entries of terms 2 and 3 that no leader ever \
             committed. S1 starts an election now."
                .into()
        }),
        until(
            "S1 to lead",
            |s, _| s.role(1) == Some(Role::Leader),
            |s, _| {
                format!(
                    "S1 leads term {} with votes from (a), (b), (e) and (f); (c) and (d) \
                     refused: their logs are more up-to-date than S1's. S1 appends its no-op \
                     at index 11.",
                    s.term(1)
                )
            },
        ),
        until(
            "every log to match the leader's",
            |s, _| all_agree(s),
            |_, _| {
                "S1 repaired every log: where a follower's log differs, its AppendEntries is \
                 rejected and nextIndex moves back (a whole term at a time, with the \
                 follower's hint) until the logs match; then the follower's conflicting \
                 entries are replaced. (a) and (b) got what they missed; the extra entries of \
                 (c), (d), (e) and (f) are gone."
                    .into()
            },
        ),
    ]
}

fn figure_7_verdict(s: &Sim, _: &Vars) -> Result<(), String> {
    ensure(s.leaders().first().map(|l| l.0) == Some(1), || {
        "S1 should lead".into()
    })?;
    ensure(all_agree(s), || "every log should match S1's".into())?;
    let leader = view(s, 1).ok_or("no S1")?;
    let mut expected = FIGURE_7[0].to_vec();
    expected.push(leader.term);
    let terms: Vec<Term> = leader.log.iter().map(|e| e.term).collect();
    ensure(terms == expected, || {
        format!("S1's log should be {expected:?}, not {terms:?}")
    })
}

// ----- Figure 8 ---------------------------------------------------------------------------

fn figure_8() -> Vec<Step> {
    vec![
        after(0, |s, _| {
            let _ = s.campaign(1);
            String::new()
        }),
        until(
            "S1 to lead and its no-op to reach every node",
            |s, _| {
                s.role(1) == Some(Role::Leader)
                    && (1..=5).all(|id| view(s, id).is_some_and(|v| v.commit >= 1))
            },
            |s, v| {
                v.term = s.term(1);
                for id in 3..=5 {
                    s.cut_both(1, id);
                }
                v.index = s.write_to(1).map_or(0, |(index, _)| index);
                format!(
                    "(a) S1 leads term {}. Cut off from S3, S4 and S5, it replicates a new \
                     entry at index {} to S2 only. (This run sends one entry per \
                     AppendEntries, to show each step.)",
                    v.term, v.index
                )
            },
        ),
        until(
            "S2 to hold the entry",
            |s, v| holds(s, 2, v.index, v.term),
            |s, _| {
                s.crash(1);
                for id in 3..=5 {
                    s.cut_both(2, id);
                }
                "(b) S1 crashes, and S2 is cut off from S3, S4 and S5, which elect one of \
                 themselves."
                    .into()
            },
        ),
        until(
            "S3, S4 or S5 to lead",
            |s, v| s.leaders().iter().any(|&(id, t)| id >= 3 && t > v.term),
            |s, v| {
                v.b = s.leader().unwrap_or(3);
                v.other = s.term(v.b);
                v.group = others(s, &[1, 2, v.b]);
                for id in 1..=5 {
                    if id != v.b {
                        s.cut_both(v.b, id);
                    }
                }
                s.crash(v.b);
                format!(
                    "S{} wins term {} and appends its no-op at index 2 (term {}), but crashes \
                     before it reaches anyone.",
                    v.b, v.other, v.other
                )
            },
        ),
        after(400, |s, v| {
            s.restart(1);
            for &id in &v.group.clone() {
                s.heal_both(1, id);
            }
            format!(
                "(c) S1 restarts, reconnected to {}; S{} stays down, S2 cut off. Only S1 \
                 can win: its log is longer (index {} of term {}) than theirs.",
                names(&v.group),
                v.b,
                v.index,
                v.term
            )
        }),
        until(
            "S1 to lead and send the old entry to a third node",
            |s, v| {
                s.role(1) == Some(Role::Leader)
                    && v.group.iter().any(|&id| holds(s, id, v.index, v.term))
            },
            |s, v| {
                v.c = v
                    .group
                    .iter()
                    .copied()
                    .find(|&id| holds(s, id, v.index, v.term))
                    .unwrap_or(3);
                v.a = commit_of(s, 1);
                v.term2 = s.term(1);
                let term = v.term2;
                s.crash(1);
                format!(
                    "S1 leads term {term} and sent index {} (term {}) to S{}: S1, S2 and S{} \
                     hold it, a majority of five. Yet S1's commit index is {}: a leader \
                     commits by counting replicas only entries of its own term (its no-op at \
                     index 3 has not reached a majority yet). S1 crashes.",
                    v.index, v.term, v.c, v.c, v.a
                )
            },
        ),
        after(300, |s, v| {
            s.restart(v.b);
            for &id in &v.group.clone() {
                s.heal_both(v.b, id);
            }
            format!(
                "(d) S{} restarts, reconnected to {}. Its last entry (index 2, term {}) is \
                 more up-to-date than theirs (term {}): they vote for it.",
                v.b,
                names(&v.group),
                v.other,
                v.term
            )
        }),
        until(
            "the old entry to be overwritten",
            |s, v| {
                s.role(v.b) == Some(Role::Leader)
                    && v.group
                        .iter()
                        .all(|&id| holds(s, id, v.index, v.other) && commit_of(s, id) >= v.index)
            },
            |s, v| {
                s.heal_all();
                s.restart(1);
                format!(
                    "S{} leads term {} and replaced index 2 with its own entry of term {} on \
                     {}: the entry of term {} that a majority held is gone. Had S1 called it \
                     committed, a client would have seen a write vanish. Figure 8 (e): had \
                     S1's own entry of term {} reached a majority first, index 2 would have \
                     been committed with it and S{} could not have won. The network heals, S1 \
                     restarts.",
                    v.b,
                    s.term(v.b),
                    v.other,
                    names(&v.group),
                    v.term,
                    v.term2,
                    v.b
                )
            },
        ),
        until("every log to agree", all_agree_check, |s, v| {
            format!(
                "Every node holds S{}'s entry of term {} at index 2.",
                s.leader().unwrap_or(v.b),
                v.other
            )
        }),
    ]
}

fn all_agree_check(s: &Sim, _: &Vars) -> bool {
    all_agree(s)
}

fn figure_8_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    ensure(v.a < v.index, || {
        format!(
            "S1's commit index ({}) should have stayed below the old entry's index {}",
            v.a, v.index
        )
    })?;
    ensure(all_agree(s), || "the logs should agree".into())?;
    for id in 1..=5 {
        ensure(holds(s, id, v.index, v.other), || {
            format!("S{id} should hold term {} at index {}", v.other, v.index)
        })?;
    }
    Ok(())
}

// ----- partial partition ------------------------------------------------------------------

fn partial_partition() -> Vec<Step> {
    vec![
        when_leader(|s, v| {
            first_leader(s, v);
            let mut order = vec![v.a];
            order.extend(others(s, &[v.a]));
            s.bridge(&order);
            v.group = order;
            format!(
                "S{} leads term {}. The network partly fails: {} stay connected; S{} reaches \
                 only S{}, S{} only S{}. Neither hears the leader.",
                v.a,
                v.term,
                names(&v.group[..3]),
                v.group[3],
                v.group[1],
                v.group[4],
                v.group[2]
            )
        }),
        after(1500, |s, v| {
            let (c, d) = (v.group[3], v.group[4]);
            v.other = s.term(c).max(s.term(d));
            if s.options().node.pre_vote {
                format!(
                    "S{c} and S{d} time out again and again, and ask for pre-votes: the \
                     nodes they reach still hear the leader and ignore them. Their terms stay \
                     at {}.",
                    v.other
                )
            } else {
                format!(
                    "Without pre-vote, S{c} and S{d} campaign at every timeout and raise \
                     their terms (now {} and {}). The nodes they reach still hear the leader \
                     and ignore them (leader stickiness), so S{} leads on, for now.",
                    s.term(c),
                    s.term(d),
                    v.a
                )
            }
        }),
        after(0, |s, v| {
            s.heal_all();
            v.at = s.now();
            "The network heals.".into()
        }),
        until(
            "the cluster to settle",
            |s, v| {
                s.now() >= v.at + 600_000
                    && settled(s).is_some()
                    && (s.options().node.pre_vote || s.leaders().iter().any(|l| l.1 > v.term))
            },
            |s, v| {
                let leader = s.leader().unwrap_or(1);
                if s.options().node.pre_vote {
                    format!(
                        "S{} still leads term {}: nothing was disrupted. Pre-vote (thesis 9.6) \
                         kept nodes that cannot win from raising their terms.",
                        leader,
                        s.term(leader)
                    )
                } else {
                    format!(
                        "S{}'s next heartbeat was answered with a higher term: it stepped \
                         down, and S{} was elected in term {}. The cluster lost its leader \
                         because of nodes that could not even reach it: pre-vote prevents \
                         this.",
                        v.a,
                        leader,
                        s.term(leader)
                    )
                }
            },
        ),
    ]
}

fn partial_with_pre_vote_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    ensure(s.leaders() == [(v.a, v.term)], || {
        format!("S{} should still lead term {}", v.a, v.term)
    })?;
    ensure(v.other == v.term, || {
        format!("terms should have stayed at {}, not {}", v.term, v.other)
    })
}

fn partial_without_pre_vote_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    ensure(v.other > v.term, || {
        "the cut-off nodes' terms should have climbed".into()
    })?;
    let leaders = s.leaders();
    ensure(leaders.len() == 1 && leaders[0].1 > v.term, || {
        format!(
            "one leader of a term above {} expected, not {leaders:?}",
            v.term
        )
    })
}

// ----- leadership transfer ----------------------------------------------------------------

fn transfer() -> Vec<Step> {
    vec![
        when_leader(|s, v| {
            lead_and_write(s, v, 3);
            format!("S{} leads term {} and takes three writes.", v.a, v.term)
        }),
        until(
            "the writes to be applied everywhere",
            |s, v| all_agree(s) && commit_of(s, v.a) >= v.index,
            |s, v| {
                v.b = other_than(s, &[v.a]);
                let result = s.transfer(v.a, v.b);
                format!(
                    "S{} hands leadership to S{}{}: it stops taking writes, makes sure S{} \
                     holds its whole log, and sends it TimeoutNow.",
                    v.a,
                    v.b,
                    result
                        .err()
                        .map_or_else(String::new, |e| format!(" (refused: {e})")),
                    v.b
                )
            },
        ),
        until(
            "the new leader",
            |s, v| s.role(v.b) == Some(Role::Leader),
            |s, v| {
                format!(
                    "S{} campaigned at once, without waiting for its timer: its vote requests \
                     say they come from a transfer, so the others do not ignore them for \
                     having heard from a leader. It leads term {}.",
                    v.b,
                    s.term(v.b)
                )
            },
        ),
    ]
}

fn transfer_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    ensure(s.leaders() == [(v.b, v.term + 1)], || {
        format!("S{} should lead term {}", v.b, v.term + 1)
    })?;
    ensure(s.sent("TimeoutNow") > 0, || "no TimeoutNow was sent".into())?;
    let old = view(s, v.a).ok_or("no old leader")?;
    ensure(old.role == Role::Follower, || {
        format!("S{} should follow", v.a)
    })
}

// ----- learner ----------------------------------------------------------------------------

fn learner() -> Vec<Step> {
    vec![
        when_leader(|s, v| {
            lead_and_write(s, v, 4);
            format!(
                "S1 to S3 are the voters; S{} leads term {} and takes four writes. S4 runs \
                 but is outside the configuration: nobody sends it anything, and it never \
                 campaigns.",
                v.a, v.term
            )
        }),
        until(
            "the writes to commit",
            |s, v| commit_of(s, v.a) >= v.index,
            |s, v| match s.add_learner(v.a, 4) {
                Ok(index) => {
                    v.index = index;
                    format!(
                        "S{} adds S4 as a learner: a membership entry at index {index}. S4 \
                         receives the log but neither votes nor counts toward a majority.",
                        v.a
                    )
                }
                Err(e) => format!("S{} refused to add S4: {e}", v.a),
            },
        ),
        until(
            "S4 to catch up",
            |s, v| {
                caught_up(s, 4, v.a)
                    && commit_of(s, v.a) >= v.index
                    && leader_knows_caught_up(s, v.a, 4)
            },
            |s, v| match s.promote(v.a, 4) {
                Ok(index) => {
                    v.other = index;
                    format!(
                        "S4 holds every committed entry. S{} promotes it to voter (another \
                         membership entry, at index {index}).",
                        v.a
                    )
                }
                Err(e) => format!("S{} refused to promote S4: {e}", v.a),
            },
        ),
        until(
            "the promotion to commit",
            |s, v| v.other > 0 && caught_up(s, 4, v.a) && commit_of(s, v.a) >= v.other,
            |_, _| "S4 is a voter: a majority is now 3 of 4, and S4 may campaign.".into(),
        ),
    ]
}

fn learner_verdict(s: &Sim, v: &Vars) -> Result<(), String> {
    ensure(v.other > 0, || "S4 was never promoted".into())?;
    let four = view(s, 4).ok_or("no S4")?;
    ensure(four.membership == crate::host::Membership::Voter, || {
        "S4 should be a voter".into()
    })?;
    ensure(caught_up(s, 4, v.a), || "S4 should be caught up".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a scenario to its end: 60 s of simulated time is far more than any needs (a
    /// step gives up after 10 s).
    fn play(scenario: &Scenario, seed: u64) -> Sim {
        let mut sim = scenario.start(seed).unwrap();
        while sim.script().is_some_and(|s| s.outcome().is_none()) && sim.now() < 60_000_000 {
            if !sim.step() {
                break;
            }
        }
        sim
    }

    #[test]
    fn every_scenario_ends_as_narrated_on_many_seeds() {
        let mut failures = Vec::new();
        for scenario in &SCENARIOS {
            for seed in 0..25 {
                let sim = play(scenario, seed);
                let script = sim.script().unwrap();
                match script.outcome() {
                    Some(Ok(())) => {}
                    other => failures.push(format!(
                        "{} seed {seed}: {other:?}\n  {}",
                        scenario.id,
                        script
                            .lines()
                            .iter()
                            .map(|(t, l)| format!("{} ms: {l}", t / 1000))
                            .collect::<Vec<_>>()
                            .join("\n  ")
                    )),
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn ids_are_unique_and_found() {
        for s in &SCENARIOS {
            assert!(std::ptr::eq(find(s.id).unwrap(), s));
        }
        assert!(find("nonsense").is_none());
    }
}
