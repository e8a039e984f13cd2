//! A disk that hangs ([`Node::set_storage_stalled`](coracle::Node::set_storage_stalled)).
//!
//! Figure 2 asks every server to update `currentTerm`, `votedFor` and `log[]` "on stable
//! storage before responding to RPCs". A node whose flush has not returned can therefore
//! neither acknowledge entries, nor grant a vote, nor, as a leader, count itself in a
//! commit quorum: as leader it holds the whole cluster's writes hostage. Told its storage
//! stalled, a node steps down, starts no election and grants no vote (pre-vote or vote)
//! until its disk answers again, so the others elect a leader among themselves.

use crate::election::vote;
use crate::host::*;
use coracle::{Message, Role};

fn granted(replies: &[(coracle::NodeId, coracle::OwnedMessage)]) -> bool {
    replies
        .iter()
        .any(|(_, m)| matches!(m.as_message(), Message::RequestVoteResponse(r) if r.vote_granted))
}

#[test]
fn a_leader_whose_storage_stalls_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.manual_sync.insert(1);
    c.propose(1, b"a");
    c.node_mut(1).set_storage_stalled(true);
    c.drain(1);
    let n = c.node(1);
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.leader(), None);
    assert_eq!(n.term(), 1, "stepping down does not change the term");
    assert!(n.storage_stalled());
    assert_eq!(n.counters().storage_stall_step_downs, 1);
}

#[test]
fn a_stalled_node_starts_no_election() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.isolate(1);
    c.node_mut(1).set_storage_stalled(true);
    let election = c.node(1).config().election_ticks as u64;
    c.tick(1, 20 * election);
    c.node_mut(1).campaign();
    c.drain(1);
    let n = c.node(1);
    assert_eq!((n.role(), n.term()), (Role::Follower, 0));
    assert_eq!(n.counters().elections_started, 0);
    // Its disk answers: it may stand again, after a fresh election timeout.
    c.node_mut(1).set_storage_stalled(false);
    c.tick(1, 2 * election);
    assert_ne!(c.node(1).role(), Role::Follower);
}

#[test]
fn a_stalled_node_grants_no_vote_nor_pre_vote() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let n = c.node_mut(1);
    n.set_storage_stalled(true);
    assert!(!granted(&step_and_collect(n, 2, vote(1, true))));
    assert!(!granted(&step_and_collect(n, 2, vote(1, false))));
    assert_eq!(n.voted_for(), None, "no vote recorded it could not persist");
    n.set_storage_stalled(false);
    assert!(granted(&step_and_collect(n, 3, vote(2, false))));
    assert_eq!(n.voted_for(), Some(3));
}

#[test]
fn a_stalled_node_ignores_a_transfer_of_leadership_to_it() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.node_mut(2).set_storage_stalled(true);
    c.node_mut(1).transfer_leadership(2).unwrap();
    c.stabilize();
    assert_eq!(c.node(2).role(), Role::Follower);
    assert_eq!(c.node(2).term(), 1);
}

#[test]
fn the_others_elect_a_leader_and_commit_while_the_old_leaders_disk_hangs() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"before");
    c.stabilize();
    // Node 1's flushes stop returning; its host notices and says so.
    c.manual_sync.insert(1);
    c.propose(1, b"stuck");
    c.node_mut(1).set_storage_stalled(true);
    let election = c.node(1).config().election_ticks as u64;
    c.run(6 * election);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1, "one new leader: {leaders:?}");
    let leader = leaders[0];
    assert_ne!(leader, 1);
    let p = c.propose(leader, b"during");
    c.stabilize();
    assert!(c.node(leader).commit_index() >= p.index);
    assert_eq!(c.node(1).role(), Role::Follower, "node 1 stayed out");
    // The disk answers: node 1 follows the new leader and catches up.
    c.manual_sync.remove(&1);
    c.sync(1);
    c.node_mut(1).set_storage_stalled(false);
    c.run(2 * election);
    assert_eq!(c.node(1).leader(), Some(leader));
    assert_eq!(c.node(1).commit_index(), c.node(leader).commit_index());
    assert!(c.commands(1).contains(&b"during".to_vec()));
}

#[test]
fn elections_started_and_won_are_counted() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let n = c.node(1).counters();
    assert_eq!((n.elections_started, n.elections_won), (1, 1));
    assert_eq!(c.node(2).counters().elections_started, 0);
}
