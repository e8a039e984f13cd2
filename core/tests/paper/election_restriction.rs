//! §5.4.1: a voter denies its vote if its own log is more up-to-date than the candidate's:
//! compare the terms of the last entries, then the lengths.

use crate::host::*;
use coracle::{Message, RequestVote};

#[test]
fn election_restriction_table() {
    // (voter log terms, candidate last index, candidate last term, granted)
    let table: &[(&[u64], u64, u64, bool)] = &[
        (&[], 0, 0, true),
        (&[1], 0, 0, false),
        (&[1], 1, 1, true),
        (&[1, 1], 1, 1, false), // same last term, shorter
        (&[1, 1], 2, 1, true),  // same last term, same length
        (&[1, 1], 3, 1, true),  // same last term, longer
        (&[1, 2], 5, 1, false), // lower last term, longer: still loses
        (&[1, 2], 1, 3, true),  // higher last term, shorter: wins
        (&[1, 1, 3], 3, 2, false),
        (&[1, 1, 3], 2, 3, false),
        (&[1, 1, 3], 3, 3, true),
    ];
    for &(voter_terms, last_log_index, last_log_term, granted) in table {
        let mut c = Cluster::with(&[1, 2, 3], default_config, |_| {
            log_with_terms(voter_terms, 3)
        });
        let replies = step_and_collect(
            c.node_mut(1),
            2,
            Message::RequestVote(RequestVote {
                term: 4,
                last_log_index,
                last_log_term,
                pre_vote: false,
                leadership_transfer: false,
            }),
        );
        let Message::RequestVoteResponse(r) = replies[0].1.as_message() else {
            panic!("expected a vote response, got {replies:?}")
        };
        assert_eq!(
            r.vote_granted, granted,
            "voter {voter_terms:?} vs candidate (index {last_log_index}, term {last_log_term})"
        );
        assert_eq!(r.term, 4);
    }
}

#[test]
fn a_candidate_with_a_stale_log_cannot_win() {
    // Node 3 missed the entries of term 2; nodes 1 and 2 refuse it.
    let mut c = Cluster::with(&[1, 2, 3], default_config, |id| {
        log_with_terms(if id == 3 { &[1] } else { &[1, 2] }, 2)
    });
    c.node_mut(3).campaign();
    c.stabilize();
    assert_ne!(c.node(3).role(), coracle::Role::Leader);
    c.elect(1);
}
