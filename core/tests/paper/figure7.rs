//! Figure 7: a leader of term 8 and six followers whose logs differ in every way the paper
//! draws (missing entries, extra uncommitted entries, both). The leader forces every
//! follower's log to match its own.

use crate::host::*;
use coracle::Role;

const LEADER: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
const FOLLOWERS: [&[u64]; 6] = [
    &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // a
    &[1, 1, 1, 4],                         // b
    &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // c
    &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // d
    &[1, 1, 1, 4, 4, 4, 4],                // e
    &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // f
];

#[test]
fn figure_7_every_follower_ends_with_the_leaders_log() {
    let members = [1, 2, 3, 4, 5, 6, 7];
    let mut c = Cluster::with(&members, default_config, |id| {
        log_with_terms(
            if id == 1 {
                LEADER
            } else {
                FOLLOWERS[id as usize - 2]
            },
            7,
        )
    });
    c.elect(1);
    assert_eq!(c.node(1).term(), 8, "the leader of term 8");
    assert_eq!(c.node(1).role(), Role::Leader);
    c.run(5);
    let mut expected = LEADER.to_vec();
    expected.push(8); // the leader's no-op
    for id in members {
        assert_eq!(c.terms(id), expected, "follower {id}");
    }
    assert_eq!(c.node(1).commit_index(), 11);
    let p = c.propose(1, b"after repair");
    c.run(2);
    for id in members {
        assert_eq!(c.node(id).commit_index(), p.index, "node {id}");
    }
}

#[test]
fn figure_7_followers_c_and_d_refuse_to_elect_the_leader_alone() {
    // c and d hold more up-to-date logs: with only them and the leader, no election.
    let mut c = Cluster::with(&[1, 4, 5], default_config, |id| {
        log_with_terms(
            if id == 1 {
                LEADER
            } else {
                FOLLOWERS[id as usize - 2]
            },
            7,
        )
    });
    c.node_mut(1).campaign();
    c.stabilize();
    assert_ne!(c.node(1).role(), Role::Leader);
}
