//! A node that joins a running cluster starts with no configuration: it never campaigns,
//! follows the leader that adds it (thesis 4.1) and learns its configuration from the log.

use crate::host::*;
use coracle::{MembershipChange, Role};

#[test]
fn a_node_of_no_configuration_waits_and_is_added_as_a_learner() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"before");
    c.run(5);
    c.add(
        default_config(4),
        store_of(&coracle::VecLog::new()),
        &[],
        coracle::VecLog::new,
    );
    c.node_mut(4).skip_vote_guard();
    // Many election timeouts: it never campaigns, the cluster's term does not move.
    let term = c.node(1).term();
    c.run(200);
    assert_eq!(c.node(4).role(), Role::Follower);
    assert_eq!(c.node(4).term(), 0, "no campaign of its own");
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(4).members().count(), 0, "no configuration yet");

    c.node_mut(1)
        .change_membership(MembershipChange::AddLearner(4))
        .unwrap();
    c.run(20);
    assert_eq!(c.commands(4), vec![b"before".to_vec()]);
    let me = c.node(4).members().find(|m| m.id == 4).unwrap();
    assert!(me.learner && !me.voter);
    assert_eq!(c.node(4).members().filter(|m| m.voter).count(), 3);
}

#[test]
fn a_node_sets_its_own_priority_and_a_leader_hands_over_to_it() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.run(5);
    assert_eq!(c.leaders(), vec![1]);
    for id in 1..=3 {
        assert!(c.node_mut(id).set_priority(2, 9), "node {id}");
    }
    c.propose(1, b"y");
    c.run(20);
    assert_eq!(c.leaders(), vec![2]);
    assert!(!c.node_mut(1).set_priority(7, 1), "no member 7");
}
