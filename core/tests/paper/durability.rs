//! The durability contract: nothing leaves before what it depends on is durable.

use crate::host::*;
use coracle::{AppendEntries, Entries, Entry, EntryKind, Message, RequestVote, Role};

#[test]
fn a_vote_does_not_leave_before_it_is_durable() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.manual_sync.insert(1);
    c.node_mut(1).step(
        2,
        Message::RequestVote(RequestVote {
            term: 1,
            last_log_index: 0,
            last_log_term: 0,
            pre_vote: false,
            leadership_transfer: false,
        }),
    );
    c.drain(1);
    assert!(
        c.queue.is_empty(),
        "vote held until the hard state is durable"
    );
    assert_eq!(c.node(1).voted_for(), Some(2));
    c.sync(1);
    assert_eq!(c.queue.len(), 1);
    assert!(matches!(
        c.queue[0].message.as_message(),
        Message::RequestVoteResponse(r) if r.vote_granted
    ));
}

#[test]
fn an_append_is_not_acknowledged_before_it_is_durable() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.manual_sync.insert(1);
    let e = [Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Command,
        data: b"x",
    }];
    c.node_mut(1).step(
        2,
        Message::AppendEntries(AppendEntries {
            term: 1,
            prev_log_index: 0,
            prev_log_term: 0,
            leader_commit: 0,
            round: 0,
            entries: Entries::from_slice(&e),
        }),
    );
    c.drain(1);
    assert!(c.queue.is_empty());
    assert_eq!(c.node(1).durable_index(), 0);
    c.sync(1);
    assert_eq!(c.node(1).durable_index(), 1);
    assert!(matches!(
        c.queue[0].message.as_message(),
        Message::AppendEntriesResponse(r) if r.success && r.index == 1
    ));
}

#[test]
fn the_leader_counts_itself_in_the_quorum_only_after_its_own_sync() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.manual_sync.insert(1);
    let p = c.propose(1, b"x");
    c.stabilize();
    assert_eq!(
        c.node(2).durable_index(),
        p.index,
        "follower 2 has it durable"
    );
    assert!(
        c.node(1).commit_index() < p.index,
        "but the leader has not synced"
    );
    c.sync(1);
    assert_eq!(c.node(1).commit_index(), p.index);
}

#[test]
fn the_leader_sends_before_its_own_sync() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.manual_sync.insert(1);
    c.propose(1, b"x");
    assert!(
        c.queue.iter().any(|e| e.message.entries().len() == 1),
        "sent before the flush"
    );
}

#[test]
fn many_entries_one_sync() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.manual_sync.insert(2);
    c.queue.clear();
    for i in 0..10u8 {
        c.node_mut(1).propose(&[i]).unwrap();
    }
    c.stabilize();
    assert!(c.held_syncs.contains_key(&2));
    c.sync(2);
    assert!(
        !c.held_syncs.contains_key(&2),
        "one sync covered all ten entries"
    );
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), 11);
}

#[test]
fn a_crash_loses_only_what_was_not_synced_and_nothing_acknowledged() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.manual_sync.insert(2);
    c.propose(1, b"x");
    c.stabilize();
    assert_eq!(c.node(2).last_index(), 2);
    c.crash(2);
    c.restart(2);
    assert_eq!(c.node(2).last_index(), 1, "the unsynced entry is gone");
    c.manual_sync.clear();
    c.run(5);
    assert_eq!(c.terms(2), vec![1, 1]);
    assert_eq!(c.commands(2), vec![b"x".to_vec()]);
}

#[test]
fn term_and_vote_survive_a_restart() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let vote = |term| {
        Message::RequestVote(RequestVote {
            term,
            last_log_index: 0,
            last_log_term: 0,
            pre_vote: false,
            leadership_transfer: false,
        })
    };
    c.node_mut(1).step(2, vote(5));
    c.drain(1);
    c.crash(1);
    c.restart(1);
    assert_eq!((c.node(1).term(), c.node(1).voted_for()), (5, Some(2)));
    let replies = step_and_collect(c.node_mut(1), 3, vote(5));
    assert!(matches!(
        replies[0].1.as_message(),
        Message::RequestVoteResponse(r) if !r.vote_granted
    ));
}

#[test]
fn a_restarted_node_applies_nothing_twice() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    for i in 0..5u8 {
        c.propose(1, &[i]);
    }
    c.run(3);
    let before = c.applied[&3].len();
    assert_eq!(before, 6);
    c.crash(3);
    c.restart(3);
    c.propose(1, b"later");
    c.run(5);
    let indexes: Vec<u64> = c.applied[&3].iter().map(|e| e.index).collect();
    assert_eq!(indexes, (1..=7).collect::<Vec<_>>());
    assert_eq!(c.node(3).role(), Role::Follower);
}
