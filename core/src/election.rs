//! Leader election (§5.2), the election restriction (§5.4.1), pre-vote (thesis 9.6),
//! leader stickiness (thesis 4.2.3) and check-quorum (thesis 6.2).

use crate::log_macros::debug;
use crate::message::{RequestVote, RequestVoteResponse};
use crate::node::{Node, Outgoing};
use crate::progress::Replication;
use crate::storage::LogStorage;
use crate::types::{EntryKind, NodeId, Role, Term};

/// The campaign of a candidate.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Campaign {
    /// Sequence number of the batch holding the candidate's own vote: it counts, and its
    /// vote requests leave, only once that is durable.
    pub own_vote: u64,
    /// The campaign is on the leader's request (TimeoutNow): voters do not ignore it.
    pub transfer: bool,
}

impl<S: LogStorage, const N: usize, const I: usize, const R: usize> Node<S, N, I, R> {
    /// A fresh randomized election timeout in `[T, T + J)` ticks (§5.2; `J` is
    /// `election_jitter_percent` of `T`, so `[T, 2T)` by default), later by `T/2` for each
    /// voter of higher priority, so the highest-ranked live node campaigns first.
    pub(crate) fn reset_election_timer(&mut self) {
        let t = self.cfg.election_ticks as u64;
        let jitter = (t * u64::from(self.cfg.election_jitter_percent) / 100).max(1);
        let me = self.cfg.priority;
        let outranked = self
            .peers
            .iter()
            .filter(|p| (p.voter || p.voter_outgoing) && p.priority > me)
            .count() as u64;
        self.timers.election_deadline =
            self.timers.now + outranked * (t / 2) + self.rng.in_range(t, jitter);
    }

    /// A leader hands leadership to a caught-up, active voter of higher priority (the
    /// bully algorithm's rule, done with a safe leadership transfer).
    pub(crate) fn hand_over_to_higher_priority(&mut self) {
        if self.transfer.is_some() {
            return;
        }
        let last = self.log.last_index();
        let me = self.cfg.priority;
        let best = self
            .peers
            .iter()
            .filter(|p| {
                p.voter
                    && p.priority > me
                    && p.replication.recent_active
                    && p.replication.match_index == last
            })
            .max_by_key(|p| p.priority)
            .map(|p| p.id);
        if let Some(id) = best {
            let _ = self.transfer_leadership(id);
        }
    }

    /// "If election timeout elapses without receiving AppendEntries RPC from current leader
    /// or granting vote to candidate: convert to candidate" (Figure 2, Followers).
    pub(crate) fn on_election_timeout(&mut self) {
        if self.may_campaign() {
            self.start_election();
        } else {
            self.reset_election_timer();
        }
    }

    pub(crate) fn start_election(&mut self) {
        if self.current_term == u64::MAX {
            // Only a forged message can bring a term this far; there is no next term.
            self.reset_election_timer();
            return;
        }
        if self.cfg.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    /// Is a leader known to be alive? Then vote requests of higher terms are ignored. A node
    /// that restarted does not know, so it assumes so for an election timeout: it may have
    /// answered a leader whose lease is still running before it went down.
    pub(crate) fn in_lease(&self) -> bool {
        if self.timers.now < self.timers.vote_guard_until {
            return true;
        }
        match self.role {
            Role::Leader => self.cfg.check_quorum,
            _ => {
                self.leader.is_some()
                    && self
                        .timers
                        .leader_contact
                        .is_some_and(|t| self.timers.now < t + self.cfg.election_ticks as u64)
            }
        }
    }

    /// "If RPC request or response contains term T > currentTerm: set currentTerm = T,
    /// convert to follower" (Figure 2, All Servers); also how a candidate or leader steps
    /// down in its own term.
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was_follower = self.role == Role::Follower;
        if term > self.current_term {
            self.current_term = term;
            self.voted_for = None;
            self.persist_hard_state();
        }
        if self.role != Role::Follower || self.leader != leader {
            self.fail_reads();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.prune_non_members(leader);
        self.timers.leader_contact = leader.map(|_| self.timers.now);
        self.transfer = None;
        self.clear_campaign();
        // Figure 2: the timer restarts on hearing from the leader or granting a vote, not
        // on adopting the term of a candidate this node may refuse (a follower that did
        // restart it could be kept from campaigning forever by candidates that cannot win).
        if !was_follower || leader.is_some() {
            self.reset_election_timer();
        }
        self.log_state_change();
    }

    fn become_pre_candidate(&mut self) {
        self.fail_reads();
        self.role = Role::PreCandidate;
        self.leader = None;
        self.timers.leader_contact = None;
        self.start_campaign();
        self.log_state_change();
        self.count_votes();
    }

    /// "On conversion to candidate, start election: increment currentTerm, vote for self,
    /// reset election timer, send RequestVote RPCs to all other servers" (Figure 2).
    /// `transfer`: on the leader's request (TimeoutNow), skipping pre-vote.
    pub(crate) fn become_candidate(&mut self, transfer: bool) {
        if self.current_term == u64::MAX {
            return;
        }
        self.fail_reads();
        self.campaign.transfer = transfer;
        self.current_term += 1;
        self.counters.elections_started += 1;
        self.voted_for = Some(self.cfg.id);
        self.persist_hard_state();
        self.campaign.own_vote = self.durability.last_write();
        self.role = Role::Candidate;
        self.leader = None;
        self.timers.leader_contact = None;
        self.start_campaign();
        self.log_state_change();
        self.count_votes();
    }

    fn start_campaign(&mut self) {
        self.reset_election_timer();
        for p in self.peers.iter_mut() {
            p.vote = None;
            p.send_request_vote = p.voter || p.voter_outgoing;
            p.send_heartbeat = false;
        }
    }

    fn clear_campaign(&mut self) {
        for p in self.peers.iter_mut() {
            p.vote = None;
            p.send_request_vote = false;
            p.send_heartbeat = false;
        }
    }

    /// Wins with votes from a majority; a candidate counts its own vote only once it is
    /// durable. Loses when a majority refused.
    pub(crate) fn count_votes(&mut self) {
        let own =
            self.role == Role::PreCandidate || self.durability.released(self.campaign.own_vote);
        let won = self.quorum_agrees(own, |p| p.vote == Some(true));
        // Lost: even with every undecided vote, no quorum.
        let lost = !self.quorum_agrees(true, |p| p.vote != Some(false));
        match self.role {
            Role::PreCandidate if won => self.become_candidate(false),
            Role::Candidate if won => self.become_leader(),
            Role::PreCandidate | Role::Candidate if lost => {
                self.become_follower(self.current_term, None)
            }
            _ => {}
        }
    }

    /// "Upon election: send initial empty AppendEntries RPCs (heartbeat) to each server"
    /// (Figure 2), after appending the no-op of the new term (§8).
    fn become_leader(&mut self) {
        self.counters.elections_won += 1;
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.prune_non_members(None);
        self.timers.leader_contact = None;
        let next = self.log.last_index() + 1;
        let now = self.timers.now;
        for p in self.peers.iter_mut() {
            p.vote = None;
            p.send_request_vote = false;
            p.send_heartbeat = false;
            p.replication = Replication::new(next, now);
            p.acked_round = 0;
            p.send_timeout_now = false;
        }
        self.reads.round_open = false;
        self.reads.round_starts.clear();
        self.reads.lease_start = None;
        self.transfer = None;
        self.timers.heartbeat_deadline = self.timers.now + self.cfg.heartbeat_ticks as u64;
        self.timers.quorum_deadline = self.timers.now + self.cfg.election_ticks as u64;
        self.log_state_change();
        // A full log leaves the leader without its no-op until the host compacts (it is
        // tried again at every heartbeat); proposals report the same error, so the host
        // learns of it.
        let _ = self.append_as_leader(EntryKind::Noop, &[]);
        self.advance_commit_index();
    }

    /// The election restriction (§5.4.1): is the candidate's log at least as up-to-date as
    /// ours? Compare the terms of the last entries, then the lengths.
    pub(crate) fn candidate_log_is_up_to_date(&self, m: &RequestVote) -> bool {
        let last_index = self.log.last_index();
        let last_term = self.log.term(last_index).unwrap_or(0);
        (m.last_log_term, m.last_log_index) >= (last_term, last_index)
    }

    /// RequestVote RPC, receiver implementation (Figure 2): reply false if term <
    /// currentTerm (handled in `step`); grant if votedFor is null or candidateId and the
    /// candidate's log is at least as up-to-date as the receiver's.
    pub(crate) fn on_request_vote(&mut self, peer: usize, m: RequestVote) {
        let candidate = self.peers[peer].id;
        let up_to_date = self.candidate_log_is_up_to_date(&m);
        if m.pre_vote {
            // Would we vote in the term the pre-candidate would start? We change nothing.
            let could_vote = m.term > self.current_term
                || self.voted_for == Some(candidate)
                || (self.voted_for.is_none() && self.leader.is_none());
            // A stalled node would not vote (below), so it promises nothing either.
            let grant = up_to_date && could_vote && !self.durability.stalled;
            debug!(
                "node {} pre-vote for {} granted {}",
                self.cfg.id, candidate, grant
            );
            self.answer_vote(
                candidate,
                RequestVoteResponse {
                    term: if grant { m.term } else { self.current_term },
                    vote_granted: grant,
                    pre_vote: true,
                },
            );
            return;
        }
        // A node whose storage stalled cannot make a vote durable, so it grants none (it
        // could only leave once the disk answers, long after the election, and would bind
        // this node to that candidate for the term meanwhile).
        let grant =
            up_to_date && self.voted_for.is_none_or(|v| v == candidate) && !self.durability.stalled;
        if grant && self.voted_for.is_none() {
            self.voted_for = Some(candidate);
            self.persist_hard_state();
        }
        if grant {
            self.reset_election_timer();
        }
        debug!(
            "node {} vote for {} granted {}",
            self.cfg.id, candidate, grant
        );
        self.answer_vote(
            candidate,
            RequestVoteResponse {
                term: self.current_term,
                vote_granted: grant,
                pre_vote: false,
            },
        );
    }

    pub(crate) fn on_request_vote_response(&mut self, peer: usize, m: RequestVoteResponse) {
        let expected = if m.pre_vote {
            self.role == Role::PreCandidate
                && m.term == self.current_term.saturating_add(m.vote_granted as u64)
        } else {
            self.role == Role::Candidate && m.term == self.current_term
        };
        if !expected {
            self.counters.stale += 1;
            return;
        }
        if self.peers[peer].voter || self.peers[peer].voter_outgoing {
            self.peers[peer].vote = Some(m.vote_granted);
            self.count_votes();
        }
    }

    /// The (pre-)vote request to send to peer `i`, once.
    pub(crate) fn vote_request_for(&mut self, i: usize) -> Option<Outgoing> {
        if !self.peers[i].send_request_vote {
            return None;
        }
        let pre_vote = self.role == Role::PreCandidate;
        // A candidate's own vote must be durable before it asks for others' (Figure 2).
        if !pre_vote && !self.durability.released(self.campaign.own_vote) {
            return None;
        }
        self.peers[i].send_request_vote = false;
        let last_log_index = self.log.last_index();
        Some(Outgoing::RequestVote(RequestVote {
            term: self.current_term.saturating_add(pre_vote as u64),
            last_log_index,
            last_log_term: self.log.term(last_log_index).unwrap_or(0),
            pre_vote,
            leadership_transfer: self.campaign.transfer,
        }))
    }

    /// Check-quorum (thesis 6.2): a leader that has not heard from a majority within an
    /// election timeout steps down, so a partitioned leader stops believing it leads.
    pub(crate) fn check_quorum(&mut self) {
        let active = self.quorum_agrees(true, |p| p.replication.recent_active);
        for p in self.peers.iter_mut() {
            p.replication.recent_active = false;
        }
        if !active {
            self.counters.check_quorum_step_downs += 1;
            self.become_follower(self.current_term, None);
        }
    }
}
