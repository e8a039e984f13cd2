//! The whiteboard scenarios, by name, on the simulator with every oracle on: a replica
//! crash, a leader crash, a network split, two leaders in different terms, the start of
//! one node, the cold start of a whole cluster, and a few more.

use coracle::{Config, Index, LogStorage, NodeId, Proposal, Role};
use coracle_tests::sim::{Cluster, Faults, SimOptions};

/// A cluster without random faults or clients: only what the scenario does happens.
fn quiet(nodes: usize, seed: u64, config: Config) -> Cluster {
    Cluster::new(
        seed,
        SimOptions {
            nodes,
            faults: Faults::NONE,
            clients: 0,
            config: Some(config),
            ..SimOptions::default()
        },
        None,
    )
}

fn cluster(nodes: usize) -> Cluster {
    quiet(nodes, 7, Config::new(0, 0))
}

fn clean(c: &Cluster) {
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

/// Waits for a leader followed by a majority.
fn elect(c: &mut Cluster) -> NodeId {
    assert!(
        c.run_until(200, |c| c.leader().is_some()),
        "no leader elected"
    );
    c.leader().expect("leader")
}

/// Waits for a leader among `group`, followed by a majority.
fn elect_among(c: &mut Cluster, group: &[NodeId]) -> NodeId {
    assert!(
        c.run_until(200, |c| c.leader().is_some_and(|l| group.contains(&l))),
        "no leader elected among {group:?}"
    );
    c.leader().expect("leader")
}

/// Proposes `key = value` on the leader and waits until the leader applied it (when it
/// would answer a client).
fn put(c: &mut Cluster, key: u64, value: u64) -> Proposal {
    let leader = elect(c);
    let p = c
        .put(leader, key, value)
        .expect("the leader takes proposals");
    let applied = c.run_until(300, |c| {
        c.node(leader).is_some_and(|n| n.applied_index() >= p.index)
    });
    assert!(
        applied,
        "put {key}={value} was not applied on leader {leader}"
    );
    assert_eq!(c.kv_get(leader, key), Some(value));
    clean(c);
    p
}

fn converge(c: &mut Cluster) {
    assert!(c.run_until(500, |c| c.converged()), "no convergence");
    clean(c);
}

fn all_hold(c: &Cluster, key: u64, value: Option<u64>) {
    for &id in c.members() {
        assert_eq!(c.kv_get(id, key), value, "node {id}, key {key}");
    }
}

fn follower_of(c: &Cluster, leader: NodeId) -> NodeId {
    *c.members()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower")
}

#[test]
fn replica_crash() {
    let mut c = cluster(5);
    put(&mut c, 1, 10);
    let leader = elect(&mut c);
    let replica = follower_of(&c, leader);
    c.crash(replica);
    put(&mut c, 2, 20); // four of five still commit
    assert_eq!(
        c.leader(),
        Some(leader),
        "losing a replica changes no leader"
    );
    c.run_for_ticks(30);
    c.restart(replica);
    converge(&mut c);
    all_hold(&c, 1, Some(10));
    all_hold(&c, 2, Some(20));
}

#[test]
fn leader_crash() {
    let mut c = cluster(5);
    put(&mut c, 1, 10);
    let old = elect(&mut c);
    let old_term = c.node(old).expect("leader").term();
    c.crash(old);
    let new = elect(&mut c);
    assert_ne!(new, old);
    assert!(c.node(new).expect("leader").term() > old_term);
    put(&mut c, 2, 20);
    c.restart(old);
    converge(&mut c);
    assert_eq!(c.node(old).expect("node").role(), Role::Follower);
    all_hold(&c, 1, Some(10));
    all_hold(&c, 2, Some(20));
}

#[test]
fn network_split() {
    let mut c = cluster(5);
    put(&mut c, 1, 10);
    let old = elect(&mut c);
    let buddy = follower_of(&c, old);
    let majority: Vec<NodeId> = c
        .members()
        .iter()
        .copied()
        .filter(|&id| id != old && id != buddy)
        .collect();
    c.partition(&[&[old, buddy], &majority]);
    // The minority leader takes a proposal it can never commit.
    let lost = c
        .put(old, 3, 30)
        .expect("still leader right after the split");
    elect_among(&mut c, &majority);
    put(&mut c, 2, 20);
    // Check-quorum: the old leader notices it lost the majority.
    assert!(c.run_until(50, |c| c
        .node(old)
        .is_some_and(|n| n.role() != Role::Leader)));
    c.heal();
    converge(&mut c);
    all_hold(&c, 2, Some(20));
    all_hold(&c, 3, None);
    let entry_term = c.node(old).and_then(|n| n.log().term(lost.index));
    assert_ne!(
        entry_term,
        Some(lost.term),
        "the minority's entry was rolled back"
    );
}

#[test]
fn two_leaders_in_different_terms() {
    // Without check-quorum a cut-off leader keeps believing it leads.
    let mut config = Config::new(0, 0);
    config.check_quorum = false;
    let mut c = quiet(5, 11, config);
    put(&mut c, 1, 10);
    let old = elect(&mut c);
    let old_term = c.node(old).expect("leader").term();
    let buddy = follower_of(&c, old);
    let majority: Vec<NodeId> = c
        .members()
        .iter()
        .copied()
        .filter(|&id| id != old && id != buddy)
        .collect();
    c.partition(&[&[old, buddy], &majority]);
    let mut uncommitted: Vec<Proposal> = Vec::new();
    for v in 0..3 {
        uncommitted.push(c.put(old, 5, 50 + v).expect("old leader takes proposals"));
        c.run_for_ticks(2);
    }
    // The buddy holds them too, but two nodes are no majority.
    assert!(c
        .node(buddy)
        .is_some_and(|n| n.last_index() >= uncommitted[2].index));
    let new = elect_among(&mut c, &majority);
    put(&mut c, 2, 20);
    let leaders = c.leaders();
    assert!(leaders.contains(&(old, old_term)), "{leaders:?}");
    let new_term = c.node(new).expect("leader").term();
    assert!(leaders.contains(&(new, new_term)) && new_term > old_term);
    clean(&c);

    c.heal();
    assert!(
        c.run_until(50, |c| c
            .node(old)
            .is_some_and(|n| n.role() != Role::Leader)),
        "the old leader steps down once it hears the new term"
    );
    converge(&mut c);
    assert_eq!(c.leaders(), vec![(new, new_term)]);
    for p in &uncommitted {
        for &id in c.members() {
            let term = c.node(id).and_then(|n| n.log().term(p.index));
            assert_ne!(
                term,
                Some(p.term),
                "node {id} kept uncommitted entry {}",
                p.index
            );
        }
    }
    all_hold(&c, 5, None);
    all_hold(&c, 2, Some(20));
}

#[test]
fn start_of_one_node() {
    let mut c = cluster(3);
    // Nodes 2 and 3 are not started yet (down with empty disks).
    c.crash(2);
    c.crash(3);
    c.run_for_ticks(100);
    assert_eq!(c.leader(), None, "one node of three cannot elect itself");
    assert!(c.leaders().is_empty());
    // Pre-vote keeps it from inflating its term while alone.
    assert_eq!(c.node(1).expect("node 1").term(), 0);
    c.restart(2);
    put(&mut c, 1, 10);
    c.restart(3);
    converge(&mut c);
    all_hold(&c, 1, Some(10));
}

#[test]
fn single_node_cluster() {
    let mut c = cluster(1);
    assert_eq!(elect(&mut c), 1);
    put(&mut c, 1, 10);
    put(&mut c, 1, 11);
    c.crash(1);
    c.restart(1);
    assert_eq!(elect(&mut c), 1);
    converge(&mut c);
    all_hold(&c, 1, Some(11));
}

#[test]
fn cold_start_of_the_whole_cluster() {
    let mut c = cluster(5);
    let mut last: Index = 0;
    for k in 0..5 {
        last = put(&mut c, k, 100 + k).index;
    }
    for &id in c.members().to_vec().iter() {
        c.crash(id);
    }
    assert!(c.leaders().is_empty());
    c.run_for_ticks(5);
    for &id in c.members().to_vec().iter() {
        c.restart(id);
    }
    elect(&mut c);
    put(&mut c, 9, 900);
    converge(&mut c);
    assert!(c.committed_index() > last);
    for k in 0..5 {
        all_hold(&c, k, Some(100 + k));
    }
}

#[test]
fn partial_partition() {
    let mut c = cluster(5);
    put(&mut c, 1, 10);
    // A, B, C connected; D reaches only B; E reaches only C.
    c.partial_partition(&[1, 2, 3, 4, 5]);
    c.run_for_ticks(100);
    let leader = elect(&mut c);
    assert!([1, 2, 3].contains(&leader), "leader {leader}");
    let p = c.put(leader, 2, 20).expect("leader");
    assert!(c.run_until(200, |c| c.committed_index() >= p.index));
    c.heal();
    converge(&mut c);
    all_hold(&c, 2, Some(20));
}

#[test]
fn asymmetric_link() {
    let mut c = cluster(5);
    put(&mut c, 1, 10);
    let leader = elect(&mut c);
    let term = c.node(leader).expect("leader").term();
    let deaf = follower_of(&c, leader);
    // `deaf` stops hearing the leader but everyone still hears `deaf`.
    c.cut(leader, deaf);
    c.run_for_ticks(100);
    put(&mut c, 2, 20);
    // Pre-vote and leader stickiness: the others, who hear the leader, refuse to help
    // `deaf` depose it.
    assert_eq!(c.leader(), Some(leader));
    assert_eq!(c.node(leader).expect("leader").term(), term);
    c.heal();
    converge(&mut c);
    all_hold(&c, 2, Some(20));
}

#[test]
fn leader_pause() {
    let mut c = cluster(3);
    put(&mut c, 1, 10);
    let old = elect(&mut c);
    c.pause(old, 60);
    c.run_for_ticks(40);
    let new = c
        .leader()
        .expect("a new leader while the old one is paused");
    assert_ne!(new, old);
    put(&mut c, 2, 20);
    c.run_for_ticks(40);
    converge(&mut c);
    assert_eq!(c.leaders().len(), 1);
    all_hold(&c, 2, Some(20));
}
