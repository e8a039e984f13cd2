//! AppendEntries (§5.3), receiver implementation of Figure 2, and the leader's side.

use crate::host::*;
use coracle::{AppendEntriesResponse, Message, OwnedMessage, ProgressState, Role};

fn response(replies: &[(u64, OwnedMessage)]) -> AppendEntriesResponse {
    match replies.last().map(|(_, m)| m.as_message()) {
        Some(Message::AppendEntriesResponse(r)) => r,
        other => panic!("expected an append response, got {other:?}"),
    }
}

fn follower(terms: &[u64], term: u64) -> TestNode {
    coracle::Node::new(default_config(1), log_with_terms(terms, term), &[1, 2, 3]).unwrap()
}

#[test]
fn append_entries_with_a_stale_term_is_rejected_with_the_current_term() {
    let mut n = follower(&[1, 1], 3);
    let r = response(&step_and_collect(
        &mut n,
        2,
        append(2, (2, 1), 2, &[entry(3, 2)]),
    ));
    assert!(!r.success);
    assert_eq!(r.term, 3);
    assert_eq!(terms_of(n.log()), vec![1, 1], "nothing appended");
}

#[test]
fn append_entries_without_the_previous_entry_is_rejected() {
    // Log too short: the hint says where it ends.
    let mut n = follower(&[1, 1], 1);
    let r = response(&step_and_collect(
        &mut n,
        2,
        append(2, (5, 2), 0, &[entry(6, 2)]),
    ));
    assert_eq!(
        (r.success, r.index, r.hint_term, r.hint_index),
        (false, 5, 0, 2)
    );
    // Term mismatch at prevLogIndex: the hint names our term there and its first index.
    let mut n = follower(&[1, 2, 2, 2], 2);
    let r = response(&step_and_collect(
        &mut n,
        2,
        append(3, (4, 3), 0, &[entry(5, 3)]),
    ));
    assert_eq!(
        (r.success, r.index, r.hint_term, r.hint_index),
        (false, 4, 2, 2)
    );
    assert_eq!(terms_of(n.log()), vec![1, 2, 2, 2]);
}

#[test]
fn append_entries_deletes_a_conflicting_suffix_and_appends() {
    let mut n = follower(&[1, 1, 2, 2], 2);
    let new = [entry(3, 3), entry(4, 3), entry(5, 3)];
    let r = response(&step_and_collect(&mut n, 2, append(3, (2, 1), 0, &new)));
    assert_eq!((r.success, r.index), (true, 5));
    assert_eq!(terms_of(n.log()), vec![1, 1, 3, 3, 3]);
}

#[test]
fn a_stale_or_duplicated_append_never_truncates() {
    let mut n = follower(&[], 1);
    let batch = [entry(1, 1), entry(2, 1), entry(3, 1)];
    step_and_collect(&mut n, 2, append(1, (0, 0), 0, &batch));
    // An older, shorter append arrives late (reordered), then a duplicate.
    let r = response(&step_and_collect(
        &mut n,
        2,
        append(1, (0, 0), 0, &batch[..1]),
    ));
    assert_eq!((r.success, r.index), (true, 1));
    step_and_collect(&mut n, 2, append(1, (0, 0), 0, &batch));
    assert_eq!(terms_of(n.log()), vec![1, 1, 1], "entries 2 and 3 survive");
}

#[test]
fn commit_index_is_min_of_leader_commit_and_last_new_entry() {
    let mut n = follower(&[], 1);
    step_and_collect(
        &mut n,
        2,
        append(1, (0, 0), 10, &[entry(1, 1), entry(2, 1)]),
    );
    assert_eq!(n.commit_index(), 2);
    // A heartbeat with prev = 1 carries commit 10 but only vouches for index 1.
    let mut n = follower(&[1, 1, 1], 1);
    step_and_collect(&mut n, 2, append(1, (1, 1), 10, &[]));
    assert_eq!(n.commit_index(), 1);
    // The commit index never goes backwards.
    step_and_collect(&mut n, 2, append(1, (0, 0), 0, &[]));
    assert_eq!(n.commit_index(), 1);
}

#[test]
fn committed_entries_are_applied_in_order_exactly_once() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    for i in 0..20u8 {
        c.propose(1, &[i]);
        if i % 3 == 0 {
            c.stabilize();
        }
    }
    c.run(3);
    let expected: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i]).collect();
    for id in [1, 2, 3] {
        assert_eq!(c.commands(id), expected, "node {id}");
        let indexes: Vec<u64> = c.applied[&id].iter().map(|e| e.index).collect();
        assert_eq!(indexes, (1..=21).collect::<Vec<_>>());
    }
}

#[test]
fn leader_pipelines_within_the_window_and_batches_by_count_and_bytes() {
    fn small_batches(id: u64) -> coracle::Config {
        let mut c = default_config(id);
        c.max_entries_per_message = 4;
        c.max_inflight = 2;
        c.max_bytes_per_message = 200;
        c
    }
    let mut c = Cluster::with(&[1, 2, 3], small_batches, |_| coracle::VecLog::new());
    c.elect(1);
    c.queue.clear();
    for _ in 0..20 {
        c.node_mut(1).propose(&[0u8; 10]).unwrap();
    }
    c.drain(1);
    let to_2: Vec<_> = c.queue.iter().filter(|e| e.to == 2).collect();
    assert_eq!(to_2.len(), 2, "two messages in flight at most");
    assert!(to_2.iter().all(|e| e.message.entries().len() == 4));
    // Byte limit: 100-byte entries, ~126 bytes with overhead: one per message.
    c.stabilize();
    c.queue.clear();
    c.node_mut(1).propose(&[0u8; 100]).unwrap();
    c.node_mut(1).propose(&[0u8; 100]).unwrap();
    c.drain(1);
    let to_2: Vec<_> = c.queue.iter().filter(|e| e.to == 2).collect();
    assert!(to_2.iter().all(|e| e.message.entries().len() == 1));
    c.stabilize();
    assert_eq!(c.node(2).last_index(), c.node(1).last_index());
    assert_eq!(
        c.node(1).progress(2).unwrap().state,
        ProgressState::Replicate
    );
}

#[test]
fn lost_appends_are_retransmitted() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"lost");
    // Everything to node 2 is lost once.
    let lost = c.take(|e| e.to == 2);
    assert!(!lost.is_empty());
    c.stabilize();
    assert_eq!(c.node(2).last_index(), 1);
    c.run(10);
    assert_eq!(c.node(2).last_index(), 2);
    assert_eq!(c.commands(2), vec![b"lost".to_vec()]);
}

/// The retransmission timer counts from when the oldest unanswered AppendEntries left, not
/// from the last rise of `matchIndex`: after a quiet spell (or a long wait for entries read
/// back from disk) an AppendEntries just sent is not sent again at the next heartbeat, before
/// its answer could have come.
#[test]
fn an_append_just_sent_is_not_retransmitted_at_the_next_heartbeat() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.stabilize();
    let retransmit = default_config(1).retransmit_ticks as u64;
    // A quiet cluster: heartbeats only, `matchIndex` does not move.
    c.run(3 * retransmit);
    let before = c.node(1).counters().retransmits;
    c.propose(1, b"slow answer");
    // The follower's answers take a few ticks, fewer than `retransmit_ticks`.
    let mut held = c.take(|e| e.to == 2 || e.from == 2);
    for _ in 1..retransmit {
        c.tick(1, 1);
        held.extend(c.take(|e| e.to == 2 || e.from == 2));
        c.stabilize();
    }
    let appends = held
        .iter()
        .filter(|e| e.to == 2 && !e.message.entries().is_empty())
        .count();
    assert_eq!(appends, 1, "the entry went to node 2 once");
    assert_eq!(c.node(1).counters().retransmits, before);
    assert_eq!(
        c.node(1).progress(2).unwrap().state,
        ProgressState::Replicate
    );
    for env in held {
        c.deliver(env);
    }
    c.stabilize();
    assert_eq!(c.node(2).last_index(), c.node(1).last_index());
    // An answer that never comes is still made up for.
    c.propose(1, b"lost");
    c.take(|e| e.to == 2);
    c.run(retransmit + 1);
    assert_eq!(c.node(2).last_index(), c.node(1).last_index());
    assert!(c.node(1).counters().retransmits > before);
}

#[test]
fn rejection_moves_next_index_back_a_whole_term_at_a_time() {
    // The follower holds a long run of term-2 entries the leader never had.
    let mut c = Cluster::with(&[1, 2, 3], default_config, |id| match id {
        1 | 3 => log_with_terms(&[1, 1, 3, 3], 3),
        _ => log_with_terms(&[1, 1, 2, 2, 2, 2, 2, 2, 2, 2], 2),
    });
    c.elect(1);
    c.stabilize();
    assert_eq!(c.terms(2), vec![1, 1, 3, 3, 4]);
    // Two round trips at most: the probe at the end, then the jump over term 2.
    assert!(c.node(1).counters().retransmits <= 1);
}

/// A follower whose disk lost entries it had acknowledged (a truncated segment, a torn
/// write) restarts with a shorter log. The leader must notice from the follower's answers
/// that the log is shorter than the follower's `matchIndex` and probe again from what the
/// follower really holds; keeping the old `matchIndex` left it stuck for good (issue 15,
/// item 1: heartbeats carry `prevLogIndex = matchIndex`, which the follower rejects, and the
/// rejection looked stale).
#[test]
fn a_follower_that_lost_acknowledged_entries_is_caught_up() {
    for keep in [0, 4] {
        let mut c = Cluster::new(&[1, 2, 3]);
        c.elect(1);
        for i in 0..10u8 {
            c.propose(1, &[i]);
        }
        c.stabilize();
        let last = c.node(1).last_index();
        assert_eq!(c.node(3).last_index(), last);
        assert_eq!(c.node(1).progress(3).unwrap().match_index, last);

        c.crash(3);
        c.lose_durable_tail(3, keep);
        c.restart(3);
        assert_eq!(c.node(3).last_index(), keep);
        // Heartbeats alone (no new proposal) must bring it back.
        c.run(40);
        assert_eq!(c.node(1).role(), Role::Leader, "leadership never moved");
        assert_eq!(
            c.node(3).last_index(),
            last,
            "keep {keep}: follower caught up (progress {:?})",
            c.node(1).progress(3)
        );
        assert_eq!(c.node(3).commit_index(), c.node(1).commit_index());
        assert_eq!(c.node(1).progress(3).unwrap().match_index, last);
        assert!(c.node(1).counters().match_resets > 0);
    }
}

/// A follower whose memory log is full (its host has not made room yet: a hung disk, a
/// snapshot not taken) takes none of the entries sent to it: it answers the first append of
/// a window "success at my last entry" and rejects the rest (their `prevLogIndex` is past
/// its log). Such answers must not open another window: the leader reopened it on every
/// success to its probe, and with the answers of earlier windows still arriving (reordered,
/// duplicated) the messages multiplied without bound (sim seed 34 with `hung-disk`: 11 GB).
/// The leader may send at most one probe per tick to a follower that takes nothing.
#[test]
fn a_follower_with_a_full_log_gets_one_probe_per_tick() {
    fn one_entry_per_message(id: u64) -> coracle::Config {
        let mut c = default_config(id);
        c.max_entries_per_message = 1;
        c.max_inflight = 6;
        c
    }
    type Full = coracle::Node<coracle::ArrayLog<8, 4>>;
    /// Delivers everything but node 2's traffic.
    fn settle_others(c: &mut Cluster<coracle::VecLog>) {
        loop {
            let others = c.take(|e| e.to != 2);
            if others.is_empty() {
                return;
            }
            for e in others {
                c.deliver(e);
            }
        }
    }
    /// One tick: the leader's messages to node 2 are answered by `full` (in reverse order
    /// and every answer delivered twice, if `shuffle`); returns how many there were.
    fn round(c: &mut Cluster<coracle::VecLog>, full: &mut Full, shuffle: bool) -> usize {
        c.drain_all();
        settle_others(c);
        let mut to_2 = c.take(|e| e.to == 2);
        if shuffle {
            to_2.reverse();
        }
        let mut answers = Vec::new();
        for e in &to_2 {
            answers.extend(step_and_collect(full, 1, e.message.as_message()));
        }
        let copies = if shuffle { 2 } else { 1 };
        for _ in 0..copies {
            for (to, message) in &answers {
                c.deliver(Envelope {
                    from: 2,
                    to: *to,
                    message: message.clone(),
                });
            }
        }
        settle_others(c);
        c.tick(1, 1);
        c.tick(3, 1);
        to_2.len()
    }

    let mut c = Cluster::with(&[1, 2, 3], one_entry_per_message, |_| {
        coracle::VecLog::new()
    });
    // Node 2 is played by hand, on a small memory log that nobody compacts.
    c.crash(2);
    c.elect(1);
    let mut full: Full = coracle::Node::new(
        one_entry_per_message(2),
        coracle::ArrayLog::new(),
        &[1, 2, 3],
    )
    .unwrap();
    for i in 0..20u8 {
        c.node_mut(1).propose(&[i]).unwrap();
    }
    // In order until the follower's log is full.
    for _ in 0..10 {
        round(&mut c, &mut full, false);
    }
    let held = full.last_index();
    assert!(
        held < 21 && full.counters().log_full > 0,
        "the follower's log is full"
    );
    assert_eq!(c.node(1).progress(2).unwrap().match_index, held);
    // Then reordered and duplicated answers.
    let mut per_round = Vec::new();
    for _ in 0..40 {
        per_round.push(round(&mut c, &mut full, true));
        // At most one probe and one heartbeat a round (a heartbeat here is every tick).
        // Checked at once: a storm doubles.
        assert!(
            per_round.iter().all(|&n| n <= 2),
            "messages to the full follower per round: {per_round:?}"
        );
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).commit_index(), 21, "nodes 1 and 3 commit");
    assert_eq!(full.last_index(), held);
}
