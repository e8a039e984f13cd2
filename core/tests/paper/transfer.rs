//! Leadership transfer (thesis 3.10).

use crate::host::*;
use coracle::{Message, ProposeError, Role, TransferError};

#[test]
fn transfer_to_an_up_to_date_follower() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.node_mut(1).transfer_leadership(2).unwrap();
    c.stabilize();
    assert_eq!(
        c.leaders(),
        vec![2],
        "the target won despite the followers' leader lease"
    );
    assert_eq!(c.node(2).term(), 2);
    assert_eq!(c.node(1).leader(), Some(2));
}

#[test]
fn transfer_to_a_lagging_node_first_brings_it_up_to_date() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    for i in 0..5u8 {
        c.propose(1, &[i]);
    }
    c.stabilize();
    c.node_mut(1).transfer_leadership(3).unwrap();
    assert_eq!(
        c.node_mut(1).propose(b"no"),
        Err(ProposeError::Transferring)
    );
    c.stabilize();
    assert_eq!(
        c.node(1).role(),
        Role::Leader,
        "no TimeoutNow to a node that lags"
    );
    c.heal();
    // The appends lost while cut off are resent after `retransmit_ticks`.
    c.run(7);
    assert_eq!(c.leaders(), vec![3]);
    assert_eq!(
        c.node(3).log().entries().len(),
        7,
        "it had everything when it took over"
    );
}

#[test]
fn a_transfer_that_does_not_happen_aborts_after_an_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.node_mut(1).transfer_leadership(3).unwrap();
    c.run(9);
    assert_eq!(c.node(1).transferring_to(), Some(3));
    c.run(2);
    assert_eq!(c.node(1).transferring_to(), None);
    assert_eq!(c.node(1).counters().transfers_aborted, 1);
    assert!(c.node_mut(1).propose(b"again").is_ok());
}

#[test]
fn transfer_requests_are_checked() {
    let mut c = Cluster::new(&[1, 2, 3]);
    assert_eq!(
        c.node_mut(2).transfer_leadership(1),
        Err(TransferError::NotLeader { leader: None })
    );
    c.elect(1);
    assert_eq!(
        c.node_mut(1).transfer_leadership(9),
        Err(TransferError::NotAVoter)
    );
    assert_eq!(
        c.node_mut(1).transfer_leadership(1),
        Err(TransferError::NotAVoter)
    );
}

/// TimeoutNow has no answer and may travel unacknowledged (a QUIC datagram in the server
/// binding): one lost must not leave the cluster waiting for the transfer to abort. The
/// leader sends it again with every heartbeat while the transfer lasts.
#[test]
fn a_lost_timeout_now_is_sent_again_at_the_next_heartbeat() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.node_mut(1).transfer_leadership(2).unwrap();
    c.drain_all();
    let lost = c.take(|e| matches!(e.message.as_message(), Message::TimeoutNow(_)));
    assert_eq!(
        lost.len(),
        1,
        "the target was up to date: TimeoutNow at once"
    );
    c.stabilize();
    assert_eq!(c.leaders(), vec![1]);
    let heartbeat = u64::from(default_config(1).heartbeat_ticks);
    c.tick(1, heartbeat);
    c.stabilize();
    assert_eq!(
        c.leaders(),
        vec![2],
        "the target took over after the next heartbeat"
    );
    assert_eq!(c.node(1).counters().transfers_aborted, 0);
}
