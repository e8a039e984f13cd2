//! Figure 8: a leader cannot conclude that an entry of an older term is committed because
//! it is stored on a majority; only entries of its own term are committed by counting.
//!
//! The state of Figure 8 (c): S1 leads term 4, S5 (which led term 3) is down. Index 2 holds
//! S1's entry of term 2 on S1 and S2; S5 holds a different entry of term 3 at index 2.

use crate::host::*;
use coracle::{Config, Message, NodeId, Role};

const S: [NodeId; 5] = [1, 2, 3, 4, 5];

fn one_entry_per_message(id: NodeId) -> Config {
    let mut c = default_config(id);
    c.max_entries_per_message = 1;
    c
}

fn figure_8c() -> Cluster {
    let mut c = Cluster::with(&S, one_entry_per_message, |id| {
        log_with_terms(
            match id {
                1 | 2 => &[1, 2],
                5 => &[1, 3],
                _ => &[1],
            },
            3,
        )
    });
    c.crash(5);
    c
}

fn carries_index(e: &Envelope, index: u64) -> bool {
    matches!(e.message.as_message(), Message::AppendEntries(_))
        && e.message.entries().iter().any(|x| x.index == index)
}

/// Delivers everything except AppendEntries that would give `index` to a node that can
/// store it (probes a node rejects still go through, so the leader finds the match point).
fn stabilize_without(c: &mut Cluster, index: u64) {
    c.drain_all();
    while let Some(env) = c.queue.pop_front() {
        let would_store = c
            .nodes
            .get(&env.to)
            .is_some_and(|n| n.last_index() >= index - 1);
        if !(carries_index(&env, index) && would_store) {
            c.deliver(env);
        }
    }
}

#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    let mut c = figure_8c();
    c.node_mut(1).campaign();
    // S1 wins term 4 and copies index 2 (term 2) to S3 and S4: now on a majority. The no-op
    // of term 4 at index 3 is held back.
    stabilize_without(&mut c, 3);
    assert_eq!((c.node(1).role(), c.node(1).term()), (Role::Leader, 4));
    assert_eq!(c.terms(1), vec![1, 2, 4], "the no-op of term 4 at index 3");
    let holders = S[..4]
        .iter()
        .filter(|&&id| c.terms(id).get(1) == Some(&2))
        .count();
    assert!(holders >= 3, "index 2 of term 2 is on a majority");
    assert_eq!(
        c.node(1).commit_index(),
        0,
        "but it is not committed (Figure 8)"
    );
    assert!(c.applied.values().all(|a| a.is_empty()));

    // (d) Rightly so: if S1 crashes now, S5 can be elected and replace index 2. (The others
    // restart too, so no one still trusts S1's lease and ignores S5.)
    for id in S {
        c.crash(id);
    }
    for id in [2, 3, 4, 5] {
        c.restart(id);
        // They were down for longer than an election timeout.
        c.node_mut(id).skip_vote_guard();
    }
    // S5's first pre-vote (for term 4) is refused with term 4; it catches up and tries again.
    c.node_mut(5).campaign();
    c.stabilize();
    c.elect(5);
    c.run(3);
    for id in [2, 3, 4, 5] {
        assert_eq!(
            c.terms(id)[..2],
            [1, 3],
            "node {id}: index 2 replaced by term 3"
        );
        assert!(c.applied[&id].iter().all(|e| e.index != 2 || e.term == 3));
    }
}

#[test]
fn figure_8_once_an_entry_of_the_current_term_commits_the_older_one_commits_too() {
    let mut c = figure_8c();
    c.elect(1);
    // (e) S1 replicates its term-4 entry to a majority before crashing.
    c.stabilize();
    assert_eq!(
        c.node(1).commit_index(),
        3,
        "index 3 (term 4) and index 2 (term 2) commit"
    );
    c.crash(1);
    c.restart(5);
    c.node_mut(5).campaign();
    c.stabilize();
    assert_ne!(
        c.node(5).role(),
        Role::Leader,
        "S5 cannot win: a majority holds term 4"
    );
    c.run(40);
    let leader = c.leaders()[0];
    assert_ne!(leader, 5);
    assert_eq!(c.terms(leader)[..3], [1, 2, 4], "committed entries survive");
}
