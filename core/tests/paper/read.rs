//! Linearizable reads (thesis 6.4): ReadIndex, lease reads, forwarding, and the stale-read
//! hazard of a deposed leader.

use crate::host::*;
use coracle::{Message, Output, ReadError, ReadMode, Role};

/// Drains `id` and returns the reads it released: (id, Some(index)) ready, (id, None) failed.
fn reads(c: &mut Cluster, id: u64) -> Vec<(u64, Option<u64>)> {
    c.drain(id);
    std::mem::take(c.read_outputs.get_mut(&id).unwrap())
}

#[test]
fn read_index_waits_for_a_heartbeat_round_answered_by_a_quorum() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.node_mut(1).read(7, ReadMode::ReadIndex).unwrap();
    assert!(reads(&mut c, 1).is_empty(), "not before a quorum answers");
    let heartbeats = c.queue.iter().filter(|e| e.from == 1).count();
    assert_eq!(heartbeats, 2, "one heartbeat round to both followers");
    c.stabilize();
    assert_eq!(reads(&mut c, 1), vec![(7, Some(1))]);
}

#[test]
fn reads_before_the_round_leaves_share_it() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    for id in 0..10 {
        c.node_mut(1).read(id, ReadMode::ReadIndex).unwrap();
    }
    c.drain(1);
    assert_eq!(c.queue.len(), 2, "ten reads, one round");
    c.stabilize();
    assert_eq!(reads(&mut c, 1).len(), 10);
}

#[test]
fn a_new_leader_serves_reads_only_after_committing_an_entry_of_its_term() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.node_mut(1).campaign();
    // Deliver only the election; hold back the no-op.
    while c.node(1).role() != Role::Leader {
        c.drain_all();
        let env = c.queue.pop_front().expect("election messages");
        c.deliver(env);
    }
    c.drain(1);
    let held: Vec<_> = c.queue.drain(..).collect();
    c.node_mut(1).read(1, ReadMode::ReadIndex).unwrap();
    c.node_mut(1).read(2, ReadMode::Lease).unwrap();
    assert_eq!(c.node(1).commit_index(), 0);
    assert!(reads(&mut c, 1).is_empty());
    c.queue.extend(held);
    c.stabilize();
    c.run(2);
    let ready = reads(&mut c, 1);
    assert_eq!(ready.len(), 2);
    assert!(
        ready.iter().all(|(_, index)| *index == Some(1)),
        "{ready:?}"
    );
}

#[test]
fn a_lease_read_needs_no_round_while_the_lease_holds() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.run(2);
    c.queue.clear();
    c.node_mut(1).read(5, ReadMode::Lease).unwrap();
    assert_eq!(reads(&mut c, 1), vec![(5, Some(1))]);
    assert!(c.queue.is_empty(), "no message needed");
    // Past the lease (election timeout minus drift without answers), a round is needed.
    c.isolate(1);
    c.tick(1, 9);
    c.node_mut(1).read(6, ReadMode::Lease).unwrap();
    assert!(reads(&mut c, 1).is_empty());
}

#[test]
fn a_follower_forwards_reads_to_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let p = c.propose(1, b"x");
    c.stabilize(); // the write completes before the read begins
    c.node_mut(2).read(9, ReadMode::ReadIndex).unwrap();
    c.drain(2);
    assert!(c
        .queue
        .iter()
        .any(|e| e.from == 2 && matches!(e.message.as_message(), Message::ReadIndex(_))));
    c.stabilize();
    c.run(1);
    let got = reads(&mut c, 2);
    assert_eq!(got, vec![(9, Some(p.index))]);
    assert!(
        c.node(2).applied_index() >= p.index,
        "served after applying the read index"
    );
}

#[test]
fn a_follower_without_a_leader_refuses_and_a_full_queue_is_back_pressure() {
    let mut c = Cluster::new(&[1, 2, 3]);
    assert_eq!(
        c.node_mut(2).read(1, ReadMode::ReadIndex),
        Err(ReadError::NoLeader)
    );
    c.elect(1);
    c.isolate(1);
    for id in 0..16 {
        c.node_mut(1).read(id, ReadMode::ReadIndex).unwrap();
    }
    assert_eq!(
        c.node_mut(1).read(99, ReadMode::ReadIndex),
        Err(ReadError::Busy)
    );
}

#[test]
fn a_forwarded_read_without_answer_fails_after_an_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.cut.insert((2, 1));
    c.node_mut(2).read(4, ReadMode::ReadIndex).unwrap();
    c.drain(2);
    c.tick(2, 9);
    assert!(reads(&mut c, 2).is_empty());
    c.tick(2, 1);
    assert_eq!(reads(&mut c, 2), vec![(4, None)]);
}

/// The Jepsen stale read: an old leader cut off from the majority must not serve reads
/// once a new leader may have committed writes, whatever read mode is asked for.
#[test]
fn an_isolated_old_leader_never_serves_a_stale_read() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.run(3);
    c.isolate(1);
    let mut read_id = 0;
    let mut new_write = None;
    for _ in 0..100 {
        c.run(1);
        if new_write.is_none() {
            if let Some(&l) = c.leaders().iter().find(|&&l| l != 1) {
                new_write = Some(c.propose(l, b"new"));
            }
        }
        let committed = new_write.is_some_and(|p| c.node(2).commit_index() >= p.index);
        for mode in [ReadMode::ReadIndex, ReadMode::Lease] {
            read_id += 1;
            let _ = c.node_mut(1).read(read_id, mode);
            for (id, index) in reads(&mut c, 1) {
                if let Some(index) = index {
                    assert!(
                        !committed || index >= new_write.unwrap().index,
                        "read {id} served at index {index} after a newer write committed"
                    );
                }
            }
        }
    }
    assert!(
        new_write.is_some(),
        "the majority elected a new leader and wrote"
    );
    assert_ne!(
        c.node(1).role(),
        Role::Leader,
        "the old leader stepped down"
    );
}

#[test]
fn pending_reads_fail_when_the_leader_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read(3, ReadMode::ReadIndex).unwrap();
    c.run(25);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(reads(&mut c, 1), vec![(3, None)]);
    let _ = Output::ReadFailed { id: 3 };
}

/// A restarted voter may have answered the old leader just before it went down: it ignores
/// vote requests for an election timeout, so the old leader's lease stays sound.
#[test]
fn a_restarted_voter_does_not_vote_within_an_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.run(2);
    c.crash(2);
    c.restart(2);
    let vote = Message::RequestVote(coracle::RequestVote {
        term: 5,
        last_log_index: 10,
        last_log_term: 5,
        pre_vote: false,
        leadership_transfer: false,
    });
    assert!(step_and_collect(c.node_mut(2), 3, vote).is_empty());
    assert_eq!(c.node(2).term(), 1);
    c.node_mut(2).advance(10);
    assert!(!step_and_collect(c.node_mut(2), 3, vote).is_empty());
}

/// A leader handing over leadership stops serving lease reads: the transfer's campaign
/// gets through the voters' leader stickiness.
#[test]
fn no_lease_reads_during_a_leadership_transfer() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.run(2);
    c.isolate(2);
    c.node_mut(1).transfer_leadership(2).unwrap();
    c.node_mut(1).read(1, ReadMode::Lease).unwrap();
    assert!(reads(&mut c, 1).is_empty(), "not served from the lease");
}
