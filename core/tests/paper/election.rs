//! Leader election (§5.2), pre-vote (thesis 9.6), leader stickiness and check-quorum.

use crate::host::*;
use coracle::{
    AppendEntries, Config, Entries, Message, NodeId, RequestVote, RequestVoteResponse, Role,
};

/// A RequestVote (or pre-vote) of `term` from a candidate with an empty log.
pub(crate) fn vote(term: u64, pre_vote: bool) -> Message<'static> {
    Message::RequestVote(RequestVote {
        term,
        last_log_index: 0,
        last_log_term: 0,
        pre_vote,
        leadership_transfer: false,
    })
}

fn vote_response(replies: &[(NodeId, coracle::OwnedMessage)]) -> RequestVoteResponse {
    match replies
        .iter()
        .map(|(_, m)| m.as_message())
        .find_map(|m| match m {
            Message::RequestVoteResponse(r) => Some(r),
            _ => None,
        }) {
        Some(r) => r,
        None => panic!("no vote response in {replies:?}"),
    }
}

fn heartbeat(term: u64) -> Message<'static> {
    Message::AppendEntries(AppendEntries {
        term,
        prev_log_index: 0,
        prev_log_term: 0,
        leader_commit: 0,
        round: 0,
        entries: Entries::EMPTY,
    })
}

#[test]
fn follower_campaigns_after_a_randomized_timeout_between_t_and_2t() {
    let mut timeouts = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let mut cfg = Config::new(1, seed);
        cfg.pre_vote = false;
        let mut n: TestNode = coracle::Node::new(cfg, coracle::VecLog::new(), &[1, 2, 3]).unwrap();
        let t = n.ticks_until_deadline();
        assert!((10..20).contains(&t), "timeout {t} outside [T, 2T)");
        timeouts.insert(t);
        n.advance(t - 1);
        assert_eq!(n.role(), Role::Follower);
        n.tick();
        assert_eq!(n.role(), Role::Candidate);
        assert_eq!(n.term(), 1);
        assert_eq!(n.voted_for(), Some(1), "a candidate votes for itself");
    }
    assert!(
        timeouts.len() > 3,
        "timeouts are not randomized: {timeouts:?}"
    );
}

#[test]
fn a_narrower_jitter_draws_the_timeout_from_t_to_t_plus_its_share_of_t() {
    let mut seen = std::collections::BTreeSet::new();
    for (percent, range) in [(50u8, 20..30), (1, 20..21), (100, 20..40)] {
        for seed in 0..60 {
            let mut cfg = Config::new(1, seed);
            cfg.election_ticks = 20;
            cfg.election_jitter_percent = percent;
            let n: TestNode = coracle::Node::new(cfg, coracle::VecLog::new(), &[1, 2, 3]).unwrap();
            let t = n.ticks_until_deadline();
            assert!(
                range.contains(&t),
                "{percent} %: timeout {t} outside {range:?}"
            );
            seen.insert((percent, t));
        }
    }
    let spread = |p: u8| seen.iter().filter(|(q, _)| *q == p).count();
    assert!(
        spread(50) > 3 && spread(100) > 6,
        "not randomized: {seen:?}"
    );
    assert_eq!(spread(1), 1, "1 % of 20 ticks is the one-tick minimum");
}

#[test]
fn an_election_jitter_of_0_or_above_100_percent_is_refused() {
    for percent in [0u8, 101, 255] {
        let mut cfg = Config::new(1, 1);
        cfg.election_jitter_percent = percent;
        assert_eq!(
            cfg.validate(),
            Err(coracle::ConfigError::ElectionJitterOutOfRange),
            "{percent} %"
        );
        let built: Result<TestNode, _> =
            coracle::Node::new(cfg, coracle::VecLog::new(), &[1, 2, 3]);
        assert!(built.is_err(), "{percent} %: a node was built");
    }
}

#[test]
fn candidate_with_a_majority_becomes_leader_and_appends_a_noop() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    assert_eq!(c.node(1).term(), 1);
    assert_eq!(
        c.terms(1),
        vec![1],
        "the leader's first entry is the no-op of its term"
    );
    assert_eq!(c.node(1).log().entries()[0].kind, coracle::EntryKind::Noop);
    assert_eq!(c.node(1).commit_index(), 1);
    for id in [2, 3] {
        assert_eq!(c.node(id).leader(), Some(1));
        assert_eq!(c.terms(id), vec![1]);
    }
}

#[test]
fn vote_once_per_term() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let n = c.node_mut(1);
    assert!(vote_response(&step_and_collect(n, 2, vote(5, false))).vote_granted);
    assert!(!vote_response(&step_and_collect(n, 3, vote(5, false))).vote_granted);
    // The same candidate asking again (a retransmission) gets the same answer.
    assert!(vote_response(&step_and_collect(n, 2, vote(5, false))).vote_granted);
    assert_eq!(n.voted_for(), Some(2));
    // A new term, a new vote.
    assert!(vote_response(&step_and_collect(n, 3, vote(6, false))).vote_granted);
}

#[test]
fn request_vote_with_a_stale_term_is_refused_with_the_current_term() {
    let mut c = Cluster::with(&[1, 2, 3], default_config, |_| log_with_terms(&[], 7));
    let r = vote_response(&step_and_collect(c.node_mut(1), 2, vote(6, false)));
    assert!(!r.vote_granted);
    assert_eq!(r.term, 7);
    assert_eq!(c.node(1).counters().stale, 1);
}

/// Figure 2: "If RPC request or response contains term T > currentTerm: set currentTerm =
/// T". The sender of a request in an older term learns ours only if it is answered: a
/// leader whose InstallSnapshot (or TimeoutNow) was dropped without a word kept sending it
/// to a voter of a higher term forever, while leader stickiness made it ignore that voter's
/// vote requests (issue 15, item 11: seed 301182). Every request of a stale term is
/// answered with the current term; answers of a stale term need none.
#[test]
fn every_request_with_a_stale_term_is_answered_with_the_current_term() {
    let snapshot = Message::InstallSnapshot(coracle::InstallSnapshot {
        term: 6,
        last_included_index: 5,
        last_included_term: 6,
        offset: 0,
        done: false,
        config: &[],
        data: b"abc",
    });
    let timeout_now = Message::TimeoutNow(coracle::TimeoutNow { term: 6 });
    let read_index = Message::ReadIndex(coracle::ReadIndex { term: 6, id: 77 });
    for (name, message) in [
        ("AppendEntries", heartbeat(6)),
        ("RequestVote", vote(6, false)),
        ("InstallSnapshot", snapshot),
        ("TimeoutNow", timeout_now),
        ("ReadIndex", read_index),
    ] {
        let mut c = Cluster::with(&[1, 2, 3], default_config, |_| log_with_terms(&[], 7));
        let replies = step_and_collect(c.node_mut(1), 2, message);
        let terms: Vec<u64> = replies
            .iter()
            .filter(|(to, _)| *to == 2)
            .map(|(_, m)| m.as_message().term())
            .collect();
        assert_eq!(terms, vec![7], "{name}: one answer carrying term 7");
        assert_eq!(c.node(1).term(), 7, "{name}: our term is unchanged");

        // The stale sender, whatever its role, adopts the term it hears.
        let mut sender = Cluster::with(&[1, 2, 3], default_config, |_| log_with_terms(&[], 5));
        sender.elect(2);
        let answer = replies[0].1.as_message();
        sender.node_mut(2).step(1, answer);
        assert_eq!(sender.node(2).term(), 7, "{name}: the sender learns term 7");
        assert_eq!(sender.node(2).role(), Role::Follower, "{name}");
    }
}

#[test]
fn any_message_with_a_higher_term_makes_a_leader_step_down() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    // An AppendEntriesResponse of a higher term (the follower saw a newer leader).
    let n = c.node_mut(1);
    n.step(
        2,
        Message::AppendEntriesResponse(coracle::AppendEntriesResponse {
            term: 9,
            success: false,
            index: 0,
            hint_term: 0,
            hint_index: 0,
            round: 0,
        }),
    );
    assert_eq!((n.role(), n.term(), n.leader()), (Role::Follower, 9, None));
}

#[test]
fn candidate_steps_down_on_an_append_of_its_own_term() {
    let mut cfg = default_config(1);
    cfg.pre_vote = false;
    let mut n: TestNode = coracle::Node::new(cfg, coracle::VecLog::new(), &[1, 2, 3]).unwrap();
    n.campaign();
    collect(&mut n);
    assert_eq!((n.role(), n.term()), (Role::Candidate, 1));
    n.step(2, heartbeat(1));
    assert_eq!(
        (n.role(), n.term(), n.leader()),
        (Role::Follower, 1, Some(2))
    );
}

#[test]
fn candidate_that_loses_the_majority_returns_to_follower() {
    let mut cfg = default_config(1);
    cfg.pre_vote = false;
    let mut n: TestNode = coracle::Node::new(cfg, coracle::VecLog::new(), &[1, 2, 3]).unwrap();
    n.campaign();
    collect(&mut n);
    for from in [2, 3] {
        n.step(
            from,
            Message::RequestVoteResponse(RequestVoteResponse {
                term: 1,
                vote_granted: false,
                pre_vote: false,
            }),
        );
    }
    assert_eq!(n.role(), Role::Follower);
}

#[test]
fn pre_vote_does_not_raise_any_term() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.isolate(3);
    c.node_mut(3).campaign();
    c.stabilize();
    assert_eq!(c.node(3).role(), Role::PreCandidate);
    for _ in 0..10 {
        c.tick(3, 100);
    }
    assert_eq!(
        c.node(3).term(),
        0,
        "an isolated pre-candidate never raises its term"
    );
    assert_eq!(c.node(1).term(), 0);
}

#[test]
fn pre_vote_granted_without_changing_the_voter() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let n = c.node_mut(1);
    let r = vote_response(&step_and_collect(n, 2, vote(1, true)));
    assert!(r.vote_granted && r.pre_vote);
    assert_eq!(r.term, 1, "a granted pre-vote carries the requested term");
    assert_eq!((n.term(), n.voted_for()), (0, None));
}

#[test]
fn a_rejoining_partitioned_node_does_not_disrupt_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    // Node 3 times out over and over while cut off.
    c.run(100);
    c.heal();
    c.run(50);
    assert_eq!(c.leaders(), vec![1]);
    assert_eq!(
        c.node(1).term(),
        1,
        "the leader's term was not raised by the rejoining node"
    );
    assert_eq!(c.node(3).term(), 1);
    assert_eq!(c.node(3).leader(), Some(1));
}

#[test]
fn without_pre_vote_a_rejoining_node_forces_a_new_election() {
    // The problem pre-vote solves, shown so the test above means something.
    fn no_pre_vote(id: NodeId) -> Config {
        let mut c = default_config(id);
        c.pre_vote = false;
        c.check_quorum = false;
        c
    }
    let mut c = Cluster::with(&[1, 2, 3], no_pre_vote, |_| coracle::VecLog::new());
    c.elect(1);
    c.isolate(3);
    c.run(100);
    assert!(c.node(3).term() > 1);
    c.heal();
    c.run(50);
    assert!(c.node(1).term() > 1, "the old leader was disrupted");
}

#[test]
fn follower_that_hears_a_live_leader_ignores_vote_requests() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let n = c.node_mut(2);
    let replies = step_and_collect(n, 3, vote(2, false));
    assert!(replies.is_empty(), "no answer while in the leader's lease");
    assert_eq!(n.term(), 1);
    assert_eq!(n.counters().ignored_in_lease, 1);
    // Once the leader has been silent for an election timeout, the request is heard.
    n.advance(10);
    let up_to_date = Message::RequestVote(RequestVote {
        term: 2,
        last_log_index: 1,
        last_log_term: 1,
        pre_vote: false,
        leadership_transfer: false,
    });
    let r = vote_response(&step_and_collect(n, 3, up_to_date));
    assert!(r.vote_granted);
    assert_eq!(n.term(), 2);
}

#[test]
fn check_quorum_leader_steps_down_when_cut_off_from_the_majority() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(1);
    c.run(25);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).counters().check_quorum_step_downs, 1);
    c.heal();
    c.run(50);
    assert_eq!(c.leaders().len(), 1);
}

#[test]
fn a_leader_in_contact_with_a_quorum_stays_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.run(200);
    assert_eq!(c.leaders(), vec![1]);
    assert_eq!(c.node(1).term(), 1);
}

#[test]
fn single_node_cluster_elects_itself_after_its_vote_is_durable() {
    let mut c = Cluster::new(&[1]);
    c.manual_sync.insert(1);
    c.node_mut(1).campaign();
    c.drain(1);
    assert_eq!(
        c.node(1).role(),
        Role::Candidate,
        "its own vote is not durable yet"
    );
    c.sync(1);
    assert_eq!(c.node(1).role(), Role::Leader);
    c.sync(1);
    assert_eq!(c.node(1).commit_index(), 1);
    let p = c.propose(1, b"a");
    c.sync(1);
    assert_eq!(c.node(1).commit_index(), p.index);
    assert_eq!(c.commands(1), vec![b"a".to_vec()]);
}

#[test]
fn elections_happen_by_themselves_and_one_leader_emerges() {
    for members in [vec![1, 2, 3], vec![1, 2, 3, 4, 5]] {
        let mut c = Cluster::new(&members);
        c.run(60);
        assert_eq!(c.leaders().len(), 1, "{members:?}");
        let leader = c.leaders()[0];
        let term = c.node(leader).term();
        for &id in &members {
            assert_eq!(
                (c.node(id).leader(), c.node(id).term()),
                (Some(leader), term)
            );
        }
    }
}

#[test]
fn deadline_tells_when_to_tick() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let n = c.node(1);
    assert_eq!(n.ticks_until_deadline(), n.config().heartbeat_ticks as u64);
    let f = c.node(2);
    assert!(f.ticks_until_deadline() >= 10);
}
