//! The oracles can fail: hand-made bad histories trip each of them, and a deliberately
//! broken storage under the simulator is caught.

use coracle::{Config, Entry, EntryKind, Index, Term};
use coracle_tests::oracle::{EntryId, LogView, Oracles, Violation};
use coracle_tests::sim::{run, Bug, Faults, LogImage, SimOptions};

/// A log holding entries of these terms at indexes 1, 2, ... (data: `tag` and the index).
fn log(terms: &[Term], tag: u8) -> LogImage {
    let mut log = LogImage::new();
    for (i, &term) in terms.iter().enumerate() {
        let index = i as Index + 1;
        log.append(&Entry {
            index,
            term,
            kind: EntryKind::Command,
            data: &[tag, index as u8],
        })
        .expect("append");
    }
    log
}

fn id(log: &LogImage, index: Index) -> EntryId {
    log.entry_id(index).expect("entry")
}

#[test]
fn two_leaders_in_one_term_break_election_safety() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let l = log(&[], 0);
    o.became_leader(1, 2, &l);
    o.became_leader(1, 2, &l); // the same leader again is fine
    o.became_leader(2, 3, &l); // a leader of another term is fine
    assert!(o.violations().is_empty());
    o.became_leader(3, 2, &l);
    assert_eq!(
        o.violations(),
        &[Violation::ElectionSafety {
            term: 2,
            first: 1,
            second: 3
        }]
    );
}

#[test]
fn a_different_entry_committed_at_an_index_breaks_state_machine_safety() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let a = log(&[1, 1, 2], 0xA);
    let b = log(&[1, 1, 3], 0xB); // different data from index 1 on
    let c = log(&[1, 1, 2], 0xA);
    assert!(o.commit(1, 2, 3, &a));
    assert!(!o.commit(3, 2, 3, &c));
    assert!(o.violations().is_empty());
    o.commit(2, 3, 2, &b);
    assert!(
        matches!(
            o.violations(),
            [Violation::StateMachineSafety {
                node: 2,
                index: 1,
                what: "commit",
                ..
            }]
        ),
        "{:?}",
        o.violations()
    );
}

#[test]
fn applying_a_different_entry_breaks_state_machine_safety() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let a = log(&[1, 1], 0xA);
    let b = log(&[1, 2], 0xA);
    o.commit(1, 1, 2, &a);
    o.applied(1, 1, id(&a, 1));
    o.applied(1, 2, id(&a, 2));
    o.applied(2, 1, id(&b, 1));
    assert!(o.violations().is_empty());
    o.applied(2, 2, id(&b, 2));
    assert!(matches!(
        o.violations(),
        [Violation::StateMachineSafety {
            node: 2,
            index: 2,
            committed_term: 1,
            node_term: 2,
            what: "apply"
        }]
    ));
}

#[test]
fn applying_twice_or_out_of_order_is_caught() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let a = log(&[1, 1, 1], 0xA);
    o.commit(1, 1, 3, &a);
    o.applied(1, 1, id(&a, 1));
    o.applied(1, 1, id(&a, 1));
    o.applied(1, 3, id(&a, 3));
    assert_eq!(
        o.violations(),
        &[
            Violation::AppliedOutOfOrder {
                node: 1,
                expected: 2,
                got: 1
            },
            Violation::AppliedOutOfOrder {
                node: 1,
                expected: 2,
                got: 3
            }
        ]
    );
    // After a restart with a rebuilt state machine, applying from 1 again is right.
    let mut o = Oracles::new(&[1]);
    o.commit(1, 1, 1, &a);
    o.applied(1, 1, id(&a, 1));
    o.restarted(1, 0, 0);
    o.applied(1, 1, id(&a, 1));
    assert!(o.violations().is_empty());
}

#[test]
fn applying_an_uncommitted_entry_is_caught() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let a = log(&[1], 0xA);
    o.applied(1, 1, id(&a, 1));
    assert!(matches!(
        o.violations(),
        [Violation::StateMachineSafety {
            what: "apply",
            committed_term: 0,
            ..
        }]
    ));
}

#[test]
fn same_index_and_term_with_different_prefixes_break_log_matching() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let a = log(&[1, 2], 0xA);
    let b = log(&[1, 2], 0xB);
    o.appended(1, 1, id(&a, 1));
    o.appended(1, 2, id(&a, 2));
    o.appended(2, 1, id(&b, 1));
    o.appended(2, 2, id(&b, 2));
    assert_eq!(
        o.violations()[0],
        Violation::LogMatching {
            index: 1,
            term: 1,
            first: 1,
            second: 2
        }
    );
    assert_eq!(o.violations().len(), 2);
}

#[test]
fn a_leader_that_truncates_breaks_leader_append_only() {
    let mut o = Oracles::new(&[1, 2, 3]);
    o.leader_stepped(1, 3, 5, 6, false);
    assert!(o.violations().is_empty());
    o.leader_stepped(1, 3, 6, 4, false);
    o.leader_stepped(1, 3, 6, 6, true);
    assert_eq!(o.violations().len(), 2);
    assert!(matches!(
        o.violations()[0],
        Violation::LeaderAppendOnly {
            node: 1,
            term: 3,
            last_before: 6,
            last_after: 4
        }
    ));
}

#[test]
fn a_leader_without_a_committed_entry_breaks_leader_completeness() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let committed = log(&[1, 1, 2], 0xA);
    o.commit(1, 2, 3, &committed);
    // A leader of term 2 (the term that committed) is not bound by it, one of term 3 is.
    let short = log(&[1, 1], 0xA);
    o.became_leader(2, 2, &short);
    assert!(o.violations().is_empty());
    o.became_leader(3, 3, &short);
    assert_eq!(
        o.violations(),
        &[Violation::LeaderCompleteness {
            leader: 3,
            term: 3,
            index: 3
        }]
    );
    // Also when the commit becomes known after the election.
    let mut o = Oracles::new(&[1, 2, 3]);
    o.became_leader(3, 5, &short);
    assert!(o.commit(1, 4, 3, &committed));
    o.check_complete(3, 5, &short);
    assert_eq!(o.violations().len(), 1);
}

#[test]
fn a_commit_index_that_goes_down_is_caught() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let a = log(&[1, 1, 1], 0xA);
    o.commit(1, 1, 3, &a);
    o.commit(1, 1, 2, &a);
    assert_eq!(
        o.violations(),
        &[Violation::CommitDecreased {
            node: 1,
            from: 3,
            to: 2
        }]
    );
    // A restart resets the commit index to the applied index: no violation.
    let mut o = Oracles::new(&[1, 2, 3]);
    o.commit(1, 1, 3, &a);
    o.restarted(1, 1, 1);
    o.commit(1, 1, 2, &a);
    assert!(o.violations().is_empty());
    // A commit index beyond the log.
    o.commit(1, 1, 9, &a);
    assert!(matches!(
        o.violations(),
        [Violation::CommitBeyondLog { commit: 9, .. }]
    ));
}

#[test]
fn a_committed_prefix_on_a_minority_breaks_durability() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let full = log(&[1, 1], 0xA);
    let short = log(&[1], 0xA);
    o.commit(1, 1, 2, &full);
    o.acknowledged(2);
    let views: [&dyn LogView; 3] = [&full, &full, &short];
    o.check_durable(views.into_iter());
    assert!(o.violations().is_empty());
    let views: [&dyn LogView; 3] = [&full, &short, &short];
    o.check_durable(views.into_iter());
    assert_eq!(
        o.violations(),
        &[Violation::Durability {
            committed: 2,
            acknowledged: 2,
            holders: 1,
            needed: 2
        }]
    );
}

/// Sim seed 18694 (`--nodes 3`, before the fix): a deposed leader of term 1 that goes on
/// committing an older index, with a joint configuration adding node 4 that never
/// commits, made Durability judge the newer commit by that configuration (3 holders of
/// 4 needed) rather than by the one that committed it (2 of 3).
#[test]
fn a_deposed_leaders_late_commit_does_not_change_the_durability_quorum() {
    let mut o = Oracles::new(&[1, 2, 3]);
    let new = log(&[1, 1, 2], 0xA);
    let old = log(&[1, 1, 1], 0xA);
    let images = || -> [(u64, &dyn LogView); 4] { [(1, &new), (2, &old), (3, &new), (4, &old)] };
    assert!(o.commit(1, 2, 3, &new));
    o.leader_committed(1, 2, 3, &[1, 2, 3], &[], images().into_iter());
    // The deposed leader commits index 2 (of term 1: the same entry) in its joint
    // configuration; a majority of both halves holds it.
    o.commit(2, 1, 2, &old);
    o.leader_committed(2, 1, 2, &[1, 2, 3, 4], &[1, 2, 3], images().into_iter());
    o.check_durable_by(images().into_iter());
    assert!(o.violations().is_empty(), "{:?}", o.violations());
    // Against the newest commit's configuration, a minority is still caught.
    let images = [(1, &new as &dyn LogView), (2, &old), (3, &old), (4, &old)];
    o.check_durable_by(images.into_iter());
    assert!(matches!(
        o.violations(),
        [Violation::Durability {
            holders: 1,
            needed: 2,
            ..
        }]
    ));
}

/// Options that make double votes likely: three nodes, frequent crashes, no pre-vote.
fn crashy(bug: Bug) -> SimOptions {
    let mut config = Config::new(0, 0);
    config.pre_vote = false;
    config.check_quorum = false;
    SimOptions {
        nodes: 3,
        steps: 4_000,
        faults: Faults::parse("crash,delay,reorder").expect("faults"),
        clients: 2,
        bug: Some(bug),
        config: Some(config),
        ..SimOptions::default()
    }
}

/// Runs seeds until one reports a violation that `wanted` accepts.
fn find(options: &SimOptions, seeds: u64, wanted: impl Fn(&Violation) -> bool) -> Option<u64> {
    (0..seeds).find(|&seed| {
        let report = run(seed, options, None);
        let found = report.violations.iter().any(&wanted);
        if found {
            eprintln!("seed {seed}: {report}");
        }
        found
    })
}

#[test]
fn vote_amnesia_is_caught_by_election_safety() {
    let options = crashy(Bug::VoteAmnesia);
    let seed = find(&options, 300, |v| {
        matches!(v, Violation::ElectionSafety { .. })
    });
    assert!(
        seed.is_some(),
        "a node that forgets its vote should let two leaders win a term"
    );
    // The same seed without the bug is clean.
    let seed = seed.expect("seed");
    let fixed = SimOptions {
        bug: None,
        ..options
    };
    let report = run(seed, &fixed, None);
    assert!(report.is_ok(), "{report}");
}

#[test]
fn losing_durable_entries_is_caught_by_the_durability_oracle() {
    let options = crashy(Bug::LoseDurable);
    let seed = find(&options, 100, |v| matches!(v, Violation::Durability { .. }));
    assert!(
        seed.is_some(),
        "a disk that loses synced entries should lose committed entries"
    );
}

#[test]
fn stale_reads_are_caught_by_the_linearizability_checker() {
    let options = SimOptions {
        steps: 4_000,
        bug: Some(Bug::StaleReads),
        ..SimOptions::default()
    };
    let found = (0..30).find(|&seed| {
        let report = run(seed, &options, None);
        matches!(
            report.linearizability,
            coracle_tests::sim::Linearizability::NotLinearizable(_)
        )
    });
    assert!(
        found.is_some(),
        "followers serving reads from their own state must produce a stale read"
    );
}

#[test]
fn unconfirmed_reads_are_caught_by_the_linearizability_checker() {
    let options = SimOptions {
        steps: 4_000,
        bug: Some(Bug::UnconfirmedReads),
        read_percent: 100,
        ..SimOptions::default()
    };
    let found = (0..200).find(|&seed| {
        let report = run(seed, &options, None);
        matches!(
            report.linearizability,
            coracle_tests::sim::Linearizability::NotLinearizable(_)
        )
    });
    let seed = found.expect("a leader answering reads without confirmation must be stale");
    // The same seed with reads confirmed by the core is linearizable.
    let fixed = SimOptions {
        bug: None,
        ..options
    };
    let report = run(seed, &fixed, None);
    assert!(report.is_ok(), "{report}");
}

/// A host that acknowledges each batch before its flush: the node reports durable what the
/// disk does not hold, which the storage contract check sees at once; a crash then loses
/// acknowledged writes.
#[test]
fn acknowledging_before_the_flush_is_caught_by_the_storage_check() {
    let options = SimOptions {
        bug: Some(Bug::EarlyAck),
        ..crashy(Bug::EarlyAck)
    };
    for seed in 0..5 {
        let report = run(seed, &options, None);
        assert!(
            report
                .violations
                .iter()
                .any(|v| matches!(v, Violation::Storage { .. })),
            "seed {seed}: {report}"
        );
    }
    // The same host acknowledging after the flush is clean.
    let report = run(
        0,
        &SimOptions {
            bug: None,
            ..options
        },
        None,
    );
    assert!(report.is_ok(), "{report}");
}

/// The simulator bounds itself: a run past its queue or healing budget fails with a
/// liveness violation that names the seed, instead of running on (a message storm once
/// grew one run to 11 GB). Tiny budgets stand in for a storm here.
#[test]
fn a_run_past_its_event_budgets_fails_naming_the_seed() {
    let queue = SimOptions {
        steps: 2_000,
        max_queued_events: 5,
        ..SimOptions::default()
    };
    let heal = SimOptions {
        steps: 2_000,
        max_heal_events: 10,
        ..SimOptions::default()
    };
    for (options, expected) in [
        (queue, "events wait in the queue (at most 5)"),
        (heal, "healing took over 10 events"),
    ] {
        let report = run(7, &options, None);
        let found = report.violations.iter().any(|v| match v {
            Violation::Liveness { what } => {
                what.contains("resource bound")
                    && what.contains(expected)
                    && what.contains("seed 7")
            }
            _ => false,
        });
        assert!(
            found,
            "expected a resource violation ({expected}): {report}"
        );
    }
    // The default budgets leave an ordinary run alone.
    let report = run(
        7,
        &SimOptions {
            steps: 2_000,
            ..SimOptions::default()
        },
        None,
    );
    assert!(report.is_ok(), "{report}");
}
