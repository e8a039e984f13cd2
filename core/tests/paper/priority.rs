//! Election priority: a bully algorithm's ranks, done inside Raft so that safety never
//! depends on them.

use crate::host::*;
use coracle::{Config, LogStorage, NodeId, Role};

/// Node `id` has priority `id`: node 3 ranks highest.
fn ranked(id: NodeId) -> Config {
    let mut c = default_config(id);
    c.priority = id as u8;
    c
}

fn ranked_cluster(ids: &[NodeId]) -> Cluster {
    let mut c = Cluster::with(ids, ranked, |_| coracle::VecLog::new());
    for &id in ids {
        for &other in ids {
            if other != id {
                assert!(c.node_mut(id).set_priority(other, other as u8));
            }
        }
    }
    c
}

#[test]
fn the_highest_ranked_healthy_node_wins() {
    let mut c = ranked_cluster(&[1, 2, 3]);
    c.run(60);
    assert_eq!(c.leaders(), vec![3]);
}

#[test]
fn a_leader_hands_over_to_a_caught_up_node_of_higher_priority() {
    let mut c = ranked_cluster(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.run(10);
    assert_eq!(c.leaders(), vec![3], "leadership moved up the ranks");
    assert_eq!(c.commands(3), vec![b"x".to_vec()]);
}

#[test]
fn a_lagging_high_priority_node_gets_leadership_only_once_caught_up() {
    let mut c = ranked_cluster(&[1, 2, 3]);
    c.elect(2);
    c.isolate(3);
    let mut committed = Vec::new();
    for i in 0..5u8 {
        committed.push(c.propose(2, &[i]));
    }
    c.run(5);
    assert_eq!(c.leaders(), vec![2]);
    c.heal();
    c.run(20);
    assert_eq!(c.leaders(), vec![3]);
    // Safety never depends on priority: the new leader holds every committed entry.
    for p in committed {
        assert_eq!(c.node(3).log().term(p.index), Some(p.term));
    }
}

#[test]
fn with_the_highest_ranked_node_down_the_others_still_elect() {
    let mut c = ranked_cluster(&[1, 2, 3]);
    c.crash(3);
    c.run(80);
    assert_eq!(c.leaders(), vec![2]);
    assert_eq!(c.node(1).role(), Role::Follower);
}
