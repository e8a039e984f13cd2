//! Membership changes (thesis chapter 4): learners, single-server changes, joint consensus.

use crate::host::*;
use coracle::{Member, MembershipChange as Change, MembershipError as Error, NodeId, Role};

fn sorted(ids: impl Iterator<Item = NodeId>) -> Vec<NodeId> {
    let mut v: Vec<_> = ids.collect();
    v.sort();
    v
}

fn voters(c: &Cluster, id: NodeId) -> Vec<NodeId> {
    sorted(c.node(id).members().filter(|m| m.voter).map(|m| m.id))
}

fn learners(c: &Cluster, id: NodeId) -> Vec<NodeId> {
    sorted(c.node(id).members().filter(|m| m.learner).map(|m| m.id))
}

fn change(c: &mut Cluster, leader: NodeId, ch: Change<'_>) -> Result<coracle::Proposal, Error> {
    let r = c.node_mut(leader).change_membership(ch);
    c.drain(leader);
    r
}

#[test]
fn a_learner_receives_the_log_but_never_counts_in_a_quorum() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"before");
    c.stabilize();
    c.join(4, &[1, 2, 3]);
    change(&mut c, 1, Change::AddLearner(4)).unwrap();
    c.run(3);
    assert_eq!(learners(&c, 1), vec![4]);
    assert_eq!(learners(&c, 4), vec![4], "the learner knows it is one");
    assert_eq!(c.commands(4), vec![b"before".to_vec()]);
    // With 2 and 3 cut off, the learner's acknowledgements commit nothing.
    c.isolate(2);
    c.isolate(3);
    let p = c.propose(1, b"not committed");
    c.stabilize();
    assert_eq!(c.node(4).last_index(), p.index, "the learner has it");
    assert!(c.node(1).commit_index() < p.index);
    // A learner never campaigns.
    c.heal();
    c.isolate(1);
    c.run(100);
    assert_ne!(c.node(4).role(), Role::Leader);
    assert_ne!(c.node(4).role(), Role::Candidate);
}

#[test]
fn a_learner_is_promoted_once_caught_up() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.join(4, &[1, 2, 3]);
    c.cut.insert((1, 4));
    change(&mut c, 1, Change::AddLearner(4)).unwrap();
    c.run(3);
    assert_eq!(
        change(&mut c, 1, Change::Promote(4)),
        Err(Error::LearnerBehind)
    );
    c.heal();
    c.run(8);
    change(&mut c, 1, Change::Promote(4)).unwrap();
    c.run(3);
    for id in [1, 2, 3, 4] {
        assert_eq!(voters(&c, id), vec![1, 2, 3, 4], "node {id}");
    }
    // Four voters: a quorum is three.
    c.isolate(3);
    c.isolate(4);
    let p = c.propose(1, b"x");
    c.stabilize();
    assert!(c.node(1).commit_index() < p.index);
}

#[test]
fn invalid_requests_return_clear_errors() {
    let mut c = Cluster::new(&[1, 2, 3]);
    assert!(matches!(
        change(&mut c, 2, Change::AddLearner(4)),
        Err(Error::NotLeader { .. })
    ));
    c.node_mut(1).campaign();
    // Right after winning, before the no-op commits: the single-server bug's fix.
    while c.node(1).role() != Role::Leader {
        c.drain_all();
        let env = c.queue.pop_front().unwrap();
        c.deliver(env);
    }
    assert_eq!(
        change(&mut c, 1, Change::AddLearner(4)),
        Err(Error::TermNotCommitted)
    );
    c.stabilize();
    change(&mut c, 1, Change::AddLearner(4)).unwrap();
    assert_eq!(
        change(&mut c, 1, Change::AddLearner(5)),
        Err(Error::ChangeInProgress)
    );
    c.stabilize();
    assert_eq!(
        change(&mut c, 1, Change::AddLearner(4)),
        Err(Error::AlreadyMember)
    );
    assert_eq!(
        change(&mut c, 1, Change::Remove(9)),
        Err(Error::UnknownNode)
    );
    // Promoting an id that is no member once added a voter that does not exist (issue 15,
    // item 5: `coracle admin promote 9` said "done" and the cluster then needed node 9).
    assert_eq!(
        change(&mut c, 1, Change::Promote(9)),
        Err(Error::UnknownNode)
    );
    assert_eq!(
        change(&mut c, 1, Change::Promote(2)),
        Err(Error::AlreadyMember)
    );
    assert_eq!(
        change(&mut c, 1, Change::AddVoter(2)),
        Err(Error::AlreadyMember)
    );
    assert_eq!(
        change(&mut c, 1, Change::AddVoter(4)),
        Err(Error::AlreadyMember),
        "node 4 is a learner: promote it"
    );
    assert_eq!(
        change(&mut c, 1, Change::Demote(4)),
        Err(Error::UnknownNode)
    );
    assert_eq!(change(&mut c, 1, Change::LeaveJoint), Err(Error::NotJoint));
    let voters_before: Vec<_> = c.node(1).members().filter(|m| m.voter).collect();
    assert_eq!(
        voters_before.len(),
        3,
        "nothing refused changed the configuration"
    );
    assert_eq!(
        change(
            &mut c,
            1,
            Change::Joint {
                voters: &[1, 1],
                learners: &[]
            }
        ),
        Err(Error::Invalid)
    );
    assert_eq!(
        change(
            &mut c,
            1,
            Change::Joint {
                voters: &[],
                learners: &[2]
            }
        ),
        Err(Error::LastVoter)
    );
    let mut single = Cluster::new(&[1]);
    single.elect(1);
    single.stabilize();
    assert_eq!(
        change(&mut single, 1, Change::Remove(1)),
        Err(Error::LastVoter)
    );
}

#[test]
fn joint_consensus_needs_both_majorities_then_leaves_by_itself() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.stabilize();
    c.join(4, &[1, 2, 3]);
    c.join(5, &[1, 2, 3]);
    c.isolate(4);
    c.isolate(5);
    let joint = change(
        &mut c,
        1,
        Change::Joint {
            voters: &[3, 4, 5],
            learners: &[],
        },
    )
    .unwrap();
    c.stabilize();
    assert!(c.node(1).is_joint());
    assert!(
        c.node(1).commit_index() < joint.index,
        "the old majority alone does not commit the joint entry"
    );
    c.heal();
    c.run(10);
    // C_old,new committed, C_new appended and committed; the old leader left.
    for id in [3, 4, 5] {
        assert!(!c.node(id).is_joint(), "node {id}");
        assert_eq!(voters(&c, id), vec![3, 4, 5], "node {id}");
    }
    c.run(30);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    assert!([3, 4, 5].contains(&leaders[0]), "a member of C_new leads");
    let p = c.propose(leaders[0], b"after");
    c.run(3);
    for id in [3, 4, 5] {
        assert!(c.commands(id).contains(&b"after".to_vec()));
    }
    assert!(
        !c.commands(1).contains(&b"after".to_vec()),
        "removed nodes get nothing"
    );
    let _ = p;
}

#[test]
fn joint_consensus_survives_a_leader_change_in_the_middle() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.stabilize();
    c.join(4, &[1, 2, 3]);
    c.join(5, &[1, 2, 3]);
    // The joint entry reaches 2 and 3 only; then the leader dies.
    c.isolate(4);
    c.isolate(5);
    change(
        &mut c,
        1,
        Change::Joint {
            voters: &[3, 4, 5],
            learners: &[],
        },
    )
    .unwrap();
    c.stabilize();
    c.crash(1);
    c.heal();
    c.run(60);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    c.run(20);
    for id in [3, 4, 5] {
        assert!(
            !c.node(id).is_joint(),
            "node {id} left the joint configuration"
        );
        assert_eq!(voters(&c, id), vec![3, 4, 5]);
    }
}

#[test]
fn a_removed_leader_steps_down_and_does_not_disturb_the_cluster() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.stabilize();
    change(&mut c, 1, Change::Remove(1)).unwrap();
    c.run(3);
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "stepped down once the change committed"
    );
    c.run(40);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    let leader = leaders[0];
    assert_ne!(leader, 1);
    let term = c.node(leader).term();
    c.run(100);
    assert_eq!(
        c.node(leader).term(),
        term,
        "the removed node raised no term"
    );
    assert_eq!(voters(&c, leader), vec![2, 3]);
}

#[test]
fn configuration_is_used_when_appended_and_rolled_back_when_truncated() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
    c.elect(1);
    c.stabilize();
    for id in [3, 4, 5] {
        c.cut.insert((1, id));
    }
    change(&mut c, 1, Change::AddLearner(6)).unwrap();
    c.stabilize();
    assert_eq!(
        learners(&c, 2),
        vec![6],
        "in use on node 2 before it commits"
    );
    c.crash(1);
    c.heal();
    // 3, 4, 5 elect one of them while 2 is away; its log overwrites 2's uncommitted entry.
    c.isolate(2);
    c.run(40);
    assert!(c.leaders().iter().all(|&l| l != 2));
    c.heal();
    c.run(5);
    assert!(learners(&c, 2).is_empty(), "rolled back with its entry");
    assert_eq!(voters(&c, 2), vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_restarted_node_takes_its_configuration_from_the_log() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.stabilize();
    change(&mut c, 1, Change::Remove(3)).unwrap();
    c.run(3);
    c.crash(2);
    c.restart(2);
    assert_eq!(voters(&c, 2), vec![1, 2]);
    let m: Vec<Member> = c.node(2).members().collect();
    assert_eq!(m.len(), 2);
}

#[test]
fn adding_a_node_while_a_follower_is_partitioned() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.stabilize();
    c.isolate(3);
    c.join(4, &[1, 2, 3]);
    c.cut.insert((3, 4));
    c.cut.insert((4, 3));
    change(&mut c, 1, Change::AddLearner(4)).unwrap();
    c.run(3);
    change(&mut c, 1, Change::Promote(4)).unwrap();
    c.run(3);
    // Four voters, one cut off: 1, 2 and 4 are a quorum and keep committing.
    assert_eq!(voters(&c, 1), vec![1, 2, 3, 4]);
    let p = c.propose(1, b"while 3 is away");
    c.run(3);
    assert!(c.node(1).commit_index() >= p.index);
    // Node 3 comes back and learns the new configuration from the log.
    c.heal();
    c.run(10);
    assert_eq!(voters(&c, 3), vec![1, 2, 3, 4]);
    assert!(c.commands(3).contains(&b"while 3 is away".to_vec()));
}

/// A node left out by a configuration entry it does not know to be committed may still
/// stand for election, counting the votes of that configuration. Voters {1, 2}; leader 2
/// removes itself while cut off, so only it holds the entry, and restarts. Node 1 needs
/// 2's vote, which 2 refuses (its log is longer); had 2 not campaigned for being no voter
/// of its configuration, no leader would ever be elected. It wins node 1's vote, commits
/// its removal, and steps down; node 1 then leads alone.
#[test]
fn a_node_left_out_by_an_uncommitted_configuration_may_still_be_elected() {
    let mut c = Cluster::new(&[1, 2]);
    c.elect(2);
    c.stabilize();
    c.isolate(2);
    change(&mut c, 2, Change::Remove(2)).unwrap();
    c.crash(2);
    c.restart(2);
    assert_eq!(voters(&c, 2), vec![1], "from its log");
    c.heal();
    c.run(200);
    assert_eq!(c.leaders(), vec![1]);
    assert_eq!(voters(&c, 1), vec![1]);
    let p = c.propose(1, b"after");
    c.run(3);
    assert!(c.node(1).commit_index() >= p.index);
}

/// The same rule does not let a removed follower disturb the cluster: it cannot learn that
/// its removal committed (nobody replicates to it any more) and campaigns, but only with
/// pre-votes that the voters, hearing from their leader, ignore.
#[test]
fn a_removed_follower_does_not_disturb_the_cluster() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.stabilize();
    change(&mut c, 1, Change::Remove(3)).unwrap();
    c.run(5);
    let term = c.node(1).term();
    c.run(300);
    assert_eq!(c.leaders(), vec![1]);
    assert_eq!(c.node(1).term(), term, "the removed node raised no term");
    assert_eq!(voters(&c, 1), vec![1, 2]);
}
