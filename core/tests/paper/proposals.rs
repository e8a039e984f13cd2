//! Proposals: redirection, assigned index and term, back-pressure.

use crate::host::*;
use coracle::{ArrayLog, Config, Node, ProposeError, Role, StorageError};

#[test]
fn a_proposal_on_a_follower_names_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    assert_eq!(
        c.node_mut(2).propose(b"x"),
        Err(ProposeError::NotLeader { leader: None })
    );
    c.elect(1);
    assert_eq!(
        c.node_mut(2).propose(b"x"),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
}

#[test]
fn a_proposal_on_the_leader_gets_its_index_and_term() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let p = c.propose(1, b"x");
    assert_eq!((p.index, p.term), (2, 1));
    c.stabilize();
    assert!(c.applied[&1]
        .iter()
        .any(|e| e.index == 2 && e.term == 1 && e.data == b"x"));
}

#[test]
fn too_large_commands_are_refused() {
    fn small(id: u64) -> Config {
        let mut c = default_config(id);
        c.max_entry_bytes = 8;
        c
    }
    let mut c = Cluster::with(&[1, 2, 3], small, |_| coracle::VecLog::new());
    c.elect(1);
    assert_eq!(
        c.node_mut(1).propose(&[0; 9]),
        Err(ProposeError::TooLarge { len: 9, max: 8 })
    );
    assert!(c.node_mut(1).propose(&[0; 8]).is_ok());
}

#[test]
fn too_many_uncommitted_entries_is_back_pressure() {
    fn limited(id: u64) -> Config {
        let mut c = default_config(id);
        c.max_uncommitted_entries = 3;
        c
    }
    let mut c = Cluster::with(&[1, 2, 3], limited, |_| coracle::VecLog::new());
    c.elect(1);
    c.isolate(1);
    for _ in 0..3 {
        c.node_mut(1).propose(b"x").unwrap();
    }
    assert_eq!(c.node_mut(1).propose(b"x"), Err(ProposeError::Busy));
    c.heal();
    c.run(3);
    assert!(
        c.node_mut(1).propose(b"x").is_ok(),
        "accepted again once committed"
    );
}

#[test]
fn a_full_fixed_capacity_log_is_an_error_not_a_panic() {
    // Six slots: the no-op, three commands, and two kept for a no-op and a configuration.
    let mut n: Node<ArrayLog<6, 8>> = Node::new(Config::new(1, 1), ArrayLog::new(), &[1]).unwrap();
    n.campaign();
    let drain = |n: &mut Node<ArrayLog<6, 8>>| {
        drain_outputs(n);
    };
    drain(&mut n);
    assert_eq!(n.role(), Role::Leader);
    for _ in 0..3 {
        n.propose(b"x").unwrap();
    }
    assert_eq!(
        n.propose(b"x"),
        Err(ProposeError::Storage(StorageError::Full))
    );
    assert!(n.propose(&[0; 9]).is_err());
    drain(&mut n);
    assert_eq!(n.applied_index(), 4);
    n.snapshot_taken(4).unwrap();
    assert!(n.propose(b"y").is_ok(), "room again after compaction");
}
