//! Snapshots and compaction (§7): InstallSnapshot in chunks, resumable; the configuration
//! travels in the snapshot.

use crate::host::*;
use coracle::{
    ArrayLog, Config, InstallSnapshot, LogStorage, MembershipChange, Message, Node, NodeId,
    SnapshotError,
};

fn small_chunks(id: NodeId) -> Config {
    let mut c = default_config(id);
    c.max_snapshot_chunk_bytes = 4;
    c
}

/// Leader 1 compacts past what node 3 has; node 3 is cut off meanwhile.
fn compacted_cluster() -> (Cluster, coracle::SnapshotMeta) {
    let mut c = Cluster::with(&[1, 2, 3], small_chunks, |_| coracle::VecLog::new());
    c.elect(1);
    c.isolate(3);
    for i in 0..10u8 {
        c.propose(1, &[b'a' + i]);
    }
    c.stabilize();
    let meta = c.snapshot(1);
    assert_eq!(meta.index, 11);
    assert_eq!(c.node(1).log().first_index(), 12);
    (c, meta)
}

fn chunk_offset(e: &Envelope) -> Option<u64> {
    match e.message.as_message() {
        Message::InstallSnapshot(m) if e.to == 3 => Some(m.offset),
        _ => None,
    }
}

/// Runs `ticks` ticks, delivering only the messages `deliver` accepts.
fn run_filtered(c: &mut Cluster, ticks: u64, mut deliver: impl FnMut(&Envelope) -> bool) {
    for _ in 0..ticks {
        let ids: Vec<_> = c.nodes.keys().copied().collect();
        for id in ids {
            c.tick(id, 1);
        }
        while let Some(env) = c.queue.pop_front() {
            if deliver(&env) {
                c.deliver(env);
            }
        }
    }
}

#[test]
fn a_follower_behind_the_compacted_log_gets_the_snapshot_in_chunks() {
    let (mut c, meta) = compacted_cluster();
    c.heal();
    c.propose(1, b"after");
    let mut chunks = 0;
    run_filtered(&mut c, 10, |e| {
        chunks += chunk_offset(e).is_some() as usize;
        true
    });
    assert_eq!(chunks, 3, "10 bytes in chunks of 4");
    assert_eq!(
        c.restored[&3],
        vec![meta],
        "the host restores from the snapshot"
    );
    assert_eq!(c.node(3).log().snapshot_meta(), Some(meta));
    assert_eq!(c.snapshot_bytes(3), b"abcdefghij");
    assert_eq!(c.node(3).log().first_index(), 12);
    c.run(2);
    assert_eq!(
        c.commands(3),
        vec![b"after".to_vec()],
        "then the log after it"
    );
    assert_eq!(c.node(3).applied_index(), c.node(1).applied_index());
}

#[test]
fn an_interrupted_install_resumes_where_it_stopped() {
    let (mut c, meta) = compacted_cluster();
    c.heal();
    let mut dropped = false;
    run_filtered(&mut c, 20, |e| {
        let drop = chunk_offset(e) == Some(4) && !dropped;
        dropped |= drop;
        !drop
    });
    assert!(dropped);
    assert_eq!(c.restored[&3], vec![meta]);
    assert!(c.node(1).counters().retransmits >= 1);
}

#[test]
fn chunks_stream_within_the_window() {
    let (mut c, meta) = compacted_cluster();
    c.heal();
    // Deliver one message at a time until the leader starts the transfer.
    let mut chunks = Vec::new();
    'run: for _ in 0..50 {
        c.tick(1, 1);
        loop {
            chunks = c.queue.iter().filter_map(chunk_offset).collect();
            if !chunks.is_empty() {
                break 'run;
            }
            let Some(env) = c.queue.pop_front() else {
                break;
            };
            c.deliver(env);
        }
    }
    assert_eq!(
        chunks,
        vec![0, 4, 8],
        "three chunks in flight at once, not one by one"
    );
    c.stabilize();
    assert_eq!(c.restored[&3], vec![meta]);
}

/// One chunk in flight at a time, so the test sees where a transfer resumes.
fn one_chunk_at_a_time(id: NodeId) -> Config {
    let mut c = small_chunks(id);
    c.max_inflight = 1;
    c
}

#[test]
fn a_new_leader_with_the_same_snapshot_resumes_the_transfer() {
    let mut c = Cluster::with(&[1, 2, 3], one_chunk_at_a_time, |_| coracle::VecLog::new());
    c.elect(1);
    c.isolate(3);
    for i in 0..10u8 {
        c.propose(1, &[b'a' + i]);
    }
    c.stabilize();
    c.run(1); // node 2 learns the commit index
    let meta = c.snapshot(1);
    assert_eq!(c.snapshot(2), meta, "same state machine, same snapshot");
    c.heal();
    // Node 3 gets two chunks from leader 1, then leader 1 dies.
    let mut got = 0;
    run_filtered(&mut c, 10, |e| {
        if got == 2 {
            return false;
        }
        got += chunk_offset(e).is_some() as usize;
        true
    });
    assert_eq!(got, 2);
    c.crash(1);
    let mut from_2 = Vec::new();
    run_filtered(&mut c, 40, |e| {
        if e.from == 2 {
            from_2.extend(chunk_offset(e));
        }
        true
    });
    assert_eq!(c.leaders(), vec![2]);
    assert_eq!(
        from_2,
        vec![0, 8],
        "node 3 answered the first chunk with where it stopped"
    );
    assert_eq!(c.restored[&3], vec![meta]);
}

#[test]
fn a_new_node_joins_as_a_learner_from_a_snapshot_then_the_log() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    for i in 0..5u8 {
        c.propose(1, &[b'0' + i]);
    }
    c.stabilize();
    for id in [1, 2, 3] {
        c.snapshot(id);
    }
    c.join(4, &[1, 2, 3]);
    c.node_mut(1)
        .change_membership(MembershipChange::AddLearner(4))
        .unwrap();
    c.propose(1, b"5");
    c.run(5);
    assert_eq!(c.restored[&4].len(), 1, "operations 1..N from the snapshot");
    assert_eq!(c.commands(4), vec![b"5".to_vec()], "N+1.. from the log");
    assert!(c.node(4).members().any(|m| m.id == 4 && m.learner));
}

#[test]
fn the_snapshot_carries_the_configuration() {
    let mut c = Cluster::with(&[1, 2, 3], small_chunks, |_| coracle::VecLog::new());
    c.elect(1);
    c.stabilize();
    c.node_mut(1)
        .change_membership(MembershipChange::AddLearner(9))
        .unwrap();
    c.isolate(3);
    c.stabilize();
    c.run(2);
    let meta = c.snapshot(1);
    assert!(!meta.config().is_empty());
    c.heal();
    c.run(10);
    assert!(
        c.node(3).members().any(|m| m.id == 9 && m.learner),
        "learned from the snapshot"
    );
    c.crash(3);
    c.restart(3);
    assert!(
        c.node(3).members().any(|m| m.id == 9 && m.learner),
        "and after a restart"
    );
}

#[test]
fn a_restarted_node_behind_its_snapshot_restores_first() {
    let (mut c, meta) = compacted_cluster();
    c.crash(1);
    c.forget_state_machine(1);
    c.restart(1);
    c.drain(1);
    assert_eq!(c.restored[&1], vec![meta]);
    assert_eq!(c.node(1).applied_index(), meta.index);
}

#[test]
fn a_full_fixed_capacity_log_asks_the_host_for_a_snapshot() {
    let mut n: Node<ArrayLog<8, 4>> = Node::new(Config::new(1, 1), ArrayLog::new(), &[1]).unwrap();
    n.campaign();
    let mut needed = 0;
    for round in 0..20 {
        if round > 0 && n.propose(b"x").is_err() {
            // back-pressure, never a panic
        }
        needed += drain_outputs(&mut n)
            .iter()
            .filter(|o| *o == "SnapshotNeeded")
            .count();
    }
    assert!(needed >= 1, "the host was asked to snapshot");
    let applied = n.applied_index();
    let meta = n.snapshot_taken(applied).unwrap();
    assert_eq!(meta.index, applied);
    assert_eq!(n.log().first_index(), applied + 1, "compacted behind it");
    assert!(n.propose(b"y").is_ok());
}

#[test]
fn taking_a_snapshot_is_one_call_with_clear_refusals() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    for i in 0..4u8 {
        c.propose(1, &[i]);
    }
    c.stabilize();
    let applied = c.node(1).applied_index();
    let n = c.node_mut(1);
    assert_eq!(
        n.snapshot_taken(applied + 1),
        Err(SnapshotError::NotApplied)
    );
    let meta = n.snapshot_taken(applied - 2).unwrap();
    assert_eq!((meta.index, meta.term), (applied - 2, 1));
    assert_eq!(n.snapshot_taken(applied - 3), Err(SnapshotError::Stale));
    c.drain(1);
    // The batch asked the host to record it and to drop what it covers.
    let store = &c.written[&1];
    assert_eq!(store.snapshot.as_ref().map(|(m, _)| *m), Some(meta));
    assert_eq!(store.compacted.0, meta.index);
}

/// The node keeps entries behind its snapshot when asked to, so a follower a little
/// behind gets entries rather than the whole snapshot.
#[test]
fn entries_behind_a_snapshot_are_kept_as_configured() {
    fn keep_two(id: NodeId) -> Config {
        let mut c = default_config(id);
        c.keep_entries_behind_snapshot = 2;
        c
    }
    let mut c = Cluster::with(&[1, 2, 3], keep_two, |_| coracle::VecLog::new());
    c.elect(1);
    for i in 0..6u8 {
        c.propose(1, &[i]);
    }
    c.stabilize();
    let meta = c.snapshot(1);
    assert_eq!(c.node(1).log().first_index(), meta.index - 1);
    assert_eq!(c.written[&1].compacted.0, meta.index - 2);
}

#[test]
fn inconsistent_snapshot_chunks_are_counted_and_ignored() {
    let bad = [
        (3, 0, &[][..]),          // a last included term above the message's term
        (1, u64::MAX, &b"x"[..]), // an offset whose end overflows
    ];
    for (last_included_term, offset, config) in bad {
        let mut c = Cluster::new(&[1, 2, 3]);
        let m = Message::InstallSnapshot(InstallSnapshot {
            term: 1,
            last_included_index: 5,
            last_included_term,
            offset,
            done: false,
            config,
            data: b"xy",
        });
        let replies = step_and_collect(c.node_mut(1), 2, m);
        assert!(replies.is_empty(), "{replies:?}");
        assert_eq!(c.node(1).counters().invalid, 1);
    }
    // A configuration that is not one.
    let mut c = Cluster::new(&[1, 2, 3]);
    let m = Message::InstallSnapshot(InstallSnapshot {
        term: 1,
        last_included_index: 5,
        last_included_term: 1,
        offset: 0,
        done: true,
        config: &[1, 2, 3],
        data: b"x",
    });
    step_and_collect(c.node_mut(1), 2, m);
    assert_eq!(c.node(1).counters().invalid, 1);
    assert_eq!(c.node(1).log().first_index(), 1);
}

/// A chunk at an offset the follower does not expect is answered with the one it does,
/// and nothing is written.
#[test]
fn a_chunk_out_of_order_is_answered_with_the_offset_expected() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let chunk = |offset, data| {
        Message::InstallSnapshot(InstallSnapshot {
            term: 1,
            last_included_index: 5,
            last_included_term: 1,
            offset,
            done: false,
            config: &[],
            data,
        })
    };
    let answers = step_and_collect(c.node_mut(1), 2, chunk(0, b"abc"));
    let next = |a: &[(u64, coracle::OwnedMessage)]| match a[0].1.as_message() {
        Message::InstallSnapshotResponse(r) => r.next_offset,
        other => panic!("{other:?}"),
    };
    assert_eq!(next(&answers), 3);
    let answers = step_and_collect(c.node_mut(1), 2, chunk(7, b"zzz"));
    assert_eq!(next(&answers), 3, "a gap: resend from 3");
    let answers = step_and_collect(c.node_mut(1), 2, chunk(3, b"de"));
    assert_eq!(next(&answers), 5);
    assert_eq!(
        c.written[&1].incoming, None,
        "the harness writes only on drain"
    );
}

/// A node that restarts from its own snapshot (its state machine empty) counts the
/// snapshot's index as committed from the start: a snapshot holds only committed entries.
/// Sim seed 10490: the commit index stayed at 0, so a leader's InstallSnapshot for that same
/// point was not seen as stale, and installing it cut the log's entries after it from a log
/// that had compacted exactly through it. Sim seed 3426: an election timeout before the
/// restore let the node campaign on a configuration it took for uncommitted.
#[test]
fn a_snapshot_restored_at_restart_counts_as_committed() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    for i in 0..3u8 {
        c.propose(1, &[i]);
    }
    c.stabilize();
    let meta = c.snapshot(2);
    c.propose(1, b"after");
    c.stabilize();
    let log = c.node(2).log().clone();
    let last = log.last_index();
    assert!(last > meta.index);

    let mut node = TestNode::new(default_config(2), log, &[1, 2, 3]).unwrap();
    assert!(node.commit_index() >= meta.index, "before the restore too");
    let mut restored = None;
    while let Some(o) = node.poll_output() {
        if let coracle::Output::RestoreSnapshot { index, .. } = o {
            restored = Some(index);
        }
    }
    assert_eq!(restored, Some(meta.index));
    assert!(node.commit_index() >= meta.index);

    let data = c.snapshot_bytes(2);
    let install = Message::InstallSnapshot(InstallSnapshot {
        term: node.term(),
        last_included_index: meta.index,
        last_included_term: meta.term,
        offset: 0,
        done: true,
        config: meta.config(),
        data: &data,
    });
    let replies = step_and_collect(&mut node, 1, install);
    assert!(matches!(
        replies.as_slice(),
        [(1, m)] if matches!(m.as_message(), Message::InstallSnapshotResponse(r) if r.done)
    ));
    assert_eq!(node.log().last_index(), last, "the entries after it stay");
}
