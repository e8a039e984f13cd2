//! Log replication (§5.3): the AppendEntries receiver, the leader's handling of answers,
//! probing and pipelining (thesis 10.2.2), heartbeats, retransmission, and the commit rule
//! (§5.3, §5.4.2 and Figure 8).

use crate::log_macros::debug;
use crate::message::{AppendEntries, AppendEntriesResponse};
use crate::node::{Node, Outgoing, Reader};
use crate::progress::ProgressState;
use crate::storage::{LogStorage, StorageError};
use crate::types::{EntryKind, Index, NodeId, Role};
use core::cmp::Reverse;

impl<S: LogStorage, const N: usize, const I: usize, const R: usize> Node<S, N, I, R> {
    /// AppendEntries RPC, receiver implementation (Figure 2).
    pub(crate) fn on_append_entries(&mut self, peer: usize, m: &AppendEntries<'_>) {
        let Some(from) = self.accept_leader(peer) else {
            return;
        };
        if !entries_are_consistent(m) {
            self.counters.invalid += 1;
            return;
        }

        // "Reply false if log doesn't contain an entry at prevLogIndex whose term matches
        // prevLogTerm." Entries through the commit index are committed, so they match the
        // leader's (Leader Completeness) and need no check.
        let last = self.log.last_index();
        if m.prev_log_index > self.commit_index {
            if m.prev_log_index > last {
                self.reject_append(from, m, 0, last);
                return;
            }
            let term = self.log.term(m.prev_log_index).unwrap_or(0);
            if term != m.prev_log_term {
                let first = self.first_index_of_term(m.prev_log_index, term);
                self.reject_append(from, m, term, first);
                return;
            }
        }

        // "If an existing entry conflicts with a new one (same index but different terms),
        // delete the existing entry and all that follow it. Append any new entries not
        // already in the log." Never truncate for an entry we already hold: a stale,
        // reordered or duplicated append must not cut entries a later one delivered.
        let mut matched = m.prev_log_index;
        for entry in m.entries.iter() {
            if entry.index <= self.commit_index {
                matched = entry.index;
                continue;
            }
            if entry.index <= self.log.last_index() {
                if self.log.term(entry.index) == Some(entry.term) {
                    matched = entry.index;
                    continue;
                }
                self.log.truncate_suffix(entry.index);
                self.durability.note_truncation(entry.index);
                self.config_truncated(entry.index);
            }
            match self.log.append(&entry) {
                Ok(()) => {
                    self.durability.note_append(entry.index);
                    matched = entry.index;
                    if entry.kind == crate::types::EntryKind::Membership {
                        self.use_config(entry.index, entry.data);
                    }
                }
                Err(e) => {
                    // Acknowledge what fit; the leader sends the rest again. A full log
                    // asks the host for a snapshot; an entry larger than a slot of this
                    // log is counted (the hosts' limits disagree).
                    self.counters.log_full += 1;
                    self.snapshots.needed |= e == StorageError::Full;
                    break;
                }
            }
        }
        let matched = matched.min(self.log.last_index());

        // "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index of last
        // new entry)."
        if m.leader_commit > self.commit_index {
            self.commit_index = self.commit_index.max(m.leader_commit.min(matched));
        }
        self.answer_append(
            from,
            AppendEntriesResponse {
                term: self.current_term,
                success: true,
                index: matched,
                hint_term: 0,
                hint_index: 0,
                round: m.round,
            },
        );
    }

    /// The sender of an AppendEntries or InstallSnapshot of the current term is its leader:
    /// a candidate steps down (§5.2), the election timer restarts. `None` if another node
    /// already leads this term (impossible by Election Safety: the sender is broken).
    pub(crate) fn accept_leader(&mut self, peer: usize) -> Option<NodeId> {
        let from = self.peers[peer].id;
        if self.role == Role::Leader || self.leader.is_some_and(|l| l != from) {
            self.counters.invalid += 1;
            return None;
        }
        if self.role != Role::Follower || self.leader.is_none() {
            self.become_follower(self.current_term, Some(from));
        }
        self.timers.leader_contact = Some(self.timers.now);
        self.reset_election_timer();
        Some(from)
    }

    fn reject_append(
        &mut self,
        to: NodeId,
        m: &AppendEntries<'_>,
        hint_term: u64,
        hint_index: Index,
    ) {
        debug!(
            "node {} rejects append at {}",
            self.cfg.id, m.prev_log_index
        );
        self.answer_append(
            to,
            AppendEntriesResponse {
                term: self.current_term,
                success: false,
                index: m.prev_log_index,
                hint_term,
                hint_index,
                round: m.round,
            },
        );
    }

    /// The first index of the run of `term` that ends at `index`, not going below the
    /// commit index (which matches the leader) or the compaction point.
    fn first_index_of_term(&self, index: Index, term: u64) -> Index {
        let floor = self.commit_index.max(self.log.first_index());
        let mut i = index;
        while i > floor && self.log.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The leader's handling of an AppendEntries answer: advance `matchIndex`/`nextIndex`
    /// on success, move `nextIndex` back on rejection (§5.3), then the commit rule.
    pub(crate) fn on_append_entries_response(&mut self, peer: usize, m: AppendEntriesResponse) {
        if self.role != Role::Leader {
            self.counters.stale += 1;
            return;
        }
        let last = self.log.last_index();
        if m.index > last {
            self.counters.invalid += 1;
            return;
        }
        if m.round > self.reads.round {
            self.counters.invalid += 1;
            return;
        }
        let next_after_rejection = (!m.success).then(|| self.next_index_after_rejection(&m));
        let now = self.timers.now;
        let p = &mut self.peers[peer];
        let round_advanced = m.round > p.acked_round;
        p.acked_round = p.acked_round.max(m.round);
        let r = &mut p.replication;
        r.recent_active = true;
        if m.success {
            let advanced = m.index > r.match_index;
            if advanced {
                r.match_index = m.index;
                r.last_progress = now;
            }
            r.free_through(m.index);
            match r.state {
                // The answer to the probe: it took entries at nextIndex or beyond, or there
                // was nothing to take (the logs agree at our last entry). Only then does the
                // window open, so every window opened follows an advance of matchIndex.
                ProgressState::Probe
                    if m.index >= r.next_index
                        || (m.index + 1 == r.next_index && r.next_index > last) =>
                {
                    r.become_replicate();
                }
                // The logs agree at nextIndex - 1, but the peer took none of the probe's
                // entries: its log is full (its host has not made room), or this answers a
                // heartbeat. Opening the window would send it entries it cannot take, each
                // answer reopening it (a storm); the next probe waits for the next tick
                // (`allow_probes`).
                ProgressState::Probe if m.index + 1 == r.next_index => {
                    r.answered_since_probe = true;
                }
                ProgressState::Probe => {
                    r.probe_sent = false;
                }
                ProgressState::Replicate => {
                    r.next_index = r.next_index.max(r.match_index + 1);
                }
                ProgressState::Snapshot => {}
            }
            if advanced {
                self.advance_commit_index();
                self.maybe_send_timeout_now();
            }
            if round_advanced {
                self.confirm_reads();
            }
            return;
        }
        let next = next_after_rejection.unwrap_or(m.index);
        if m.index <= r.match_index && r.state != ProgressState::Snapshot {
            // The peer rejects an entry at or below its `matchIndex`: it no longer holds
            // what it acknowledged (a disk that lost its tail) or, rarely, this is a
            // rejection of an older probe that a reordering network delivered late. Either
            // way only a lower `matchIndex` is true for sure: what its answer says it
            // holds when its log is just shorter (the prefix it acknowledged before), and
            // nothing when it holds another term there. Probe again from there; a stale
            // rejection costs one more round trip, a kept `matchIndex` would leave the peer
            // stuck for good (heartbeats carry `prevLogIndex = matchIndex`).
            r.match_index = if m.hint_term == 0 {
                r.match_index.min(m.hint_index)
            } else {
                0
            };
            r.become_probe(next.min(m.index));
            self.counters.match_resets += 1;
            if round_advanced {
                self.confirm_reads();
            }
            return;
        }
        match r.state {
            // Rejections of messages sent before the peer matched are stale.
            ProgressState::Replicate if m.index > r.match_index => {
                r.become_probe(next.min(m.index));
                self.counters.retransmits += 1;
            }
            ProgressState::Probe if m.index + 1 == r.next_index => {
                r.next_index = next.min(m.index).max(r.match_index + 1);
                r.probe_sent = false;
            }
            _ => self.counters.stale += 1,
        }
        if round_advanced {
            self.confirm_reads();
        }
    }

    /// Where to resume after a rejection, using the follower's hint: skip the whole
    /// conflicting term, or jump to the end of a short log.
    fn next_index_after_rejection(&self, m: &AppendEntriesResponse) -> Index {
        if m.hint_term == 0 {
            return m.hint_index.saturating_add(1);
        }
        // Our last entry of the follower's conflicting term, if we have that term.
        let mut i = m.index.min(self.log.last_index());
        let first = self.log.first_index();
        while i >= first && self.log.term(i).is_some_and(|t| t > m.hint_term) {
            i -= 1;
        }
        if i >= first && self.log.term(i) == Some(m.hint_term) {
            i + 1
        } else {
            m.hint_index.max(1)
        }
    }

    /// The commit rule (§5.3, §5.4.2): an index is committed once a majority of voters hold
    /// it AND its entry is from the leader's current term (Figure 8). The leader counts
    /// itself only for entries that are durable on its own storage.
    pub(crate) fn advance_commit_index(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let index = self.quorum_value(self.durability.durable_index, |p| p.replication.match_index);
        if index > self.commit_index && self.log.term(index) == Some(self.current_term) {
            debug_assert!(
                index <= self.durability.durable_index
                    || self.quorum_agrees(false, |p| p.replication.match_index >= index),
                "the leader counts itself only for entries durable here"
            );
            self.commit_index = index;
            if !self.reads.pending.is_empty() {
                self.confirm_reads();
            }
            self.on_config_committed();
        }
    }

    /// Leader, once per tick: a peer that answered the probe without taking its entries (a
    /// full log, room coming as its host flushes and applies) or answered a heartbeat while
    /// the probe was lost gets the next probe now: at most one a tick, however many answers
    /// (duplicated, reordered) arrive. A silent peer gets none. A host that sleeps until
    /// the next deadline probes at its heartbeats.
    pub(crate) fn allow_probes(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        for p in self.peers.iter_mut() {
            let r = &mut p.replication;
            if r.state == ProgressState::Probe && r.answered_since_probe {
                r.probe_sent = false;
                r.answered_since_probe = false;
            }
        }
    }

    /// Leader timer: a heartbeat to every peer, and retransmission for peers whose
    /// pipelined messages went unanswered.
    pub(crate) fn on_heartbeat_timeout(&mut self) {
        if self.log.term(self.log.last_index()) != Some(self.current_term) {
            // The no-op of the election did not fit (a full log): in once the host made
            // room, or nothing of this term ever commits without a write.
            let _ = self.append_as_leader(EntryKind::Noop, &[]);
        }
        self.hand_over_to_higher_priority();
        self.resend_timeout_now();
        // Each heartbeat starts a round: its answers renew the lease.
        self.open_round();
        let now = self.timers.now;
        let retransmit = self.cfg.retransmit_ticks as u64;
        for p in self.peers.iter_mut() {
            p.send_heartbeat = true;
            let r = &mut p.replication;
            if r.state == ProgressState::Replicate
                && !r.inflight.is_empty()
                && now >= r.last_progress + retransmit
            {
                r.become_probe(r.match_index + 1);
                r.last_progress = now;
                self.counters.retransmits += 1;
            }
            if r.state == ProgressState::Snapshot
                && r.snapshot_sent > r.snapshot_acked
                && now >= r.last_progress + retransmit
            {
                // A chunk or its answer was lost, or the follower lost chunks it had taken:
                // send again from where it last said it stands.
                r.snapshot_acked = r.snapshot_acked.min(r.snapshot_heard);
                r.snapshot_sent = r.snapshot_acked;
                r.last_progress = now;
                self.counters.retransmits += 1;
            }
        }
    }

    /// The next AppendEntries for peer `i`: a probe, a batch within the window, or a
    /// heartbeat.
    pub(crate) fn append_for(&mut self, i: usize) -> Option<Outgoing> {
        let last = self.log.last_index();
        let window = self.cfg.max_inflight.min(I);
        let r = &self.peers[i].replication;
        let send_entries = match r.state {
            ProgressState::Probe => !r.probe_sent,
            ProgressState::Replicate => r.next_index <= last && r.inflight.len() < window,
            ProgressState::Snapshot => false,
        };
        let next = r.next_index;
        if r.state == ProgressState::Snapshot {
            if let Some(chunk) = self.snapshot_chunk_for(i) {
                return Some(chunk);
            }
        }
        if send_entries {
            let Some(prev_log_term) = self.log.term(next - 1) else {
                // The entries this peer needs are compacted away: send the snapshot.
                if self.start_snapshot(i) {
                    return self.snapshot_chunk_for(i);
                }
                self.peers[i].send_heartbeat = false;
                return None;
            };
            let len = self.batch_len(next, last);
            if len == 0 && next <= last {
                // The data of `next` is not in memory: ask the host, send when it is.
                let reader = self.reader_of(i);
                self.want_entries(next, reader);
                return self.heartbeat_for(i);
            }
            let leader_commit = self.commit_index;
            let now = self.timers.now;
            let p = &mut self.peers[i];
            p.send_heartbeat = false;
            let r = &mut p.replication;
            match r.state {
                ProgressState::Probe => {
                    r.probe_sent = true;
                    r.answered_since_probe = false;
                }
                ProgressState::Replicate => {
                    if r.inflight.is_empty() {
                        // The retransmission timer starts with the oldest message in flight.
                        r.last_progress = now;
                    }
                    r.next_index = next + len as u64;
                    let _ = r.inflight.push_back(next + len as u64 - 1);
                }
                ProgressState::Snapshot => {}
            }
            return Some(Outgoing::Append {
                prev_log_index: next - 1,
                prev_log_term,
                leader_commit,
                len,
            });
        }
        self.heartbeat_for(i)
    }

    /// Where peer `i`, which needs entries read back, stands among the readers of the
    /// next fetch ([`Reader`]).
    fn reader_of(&self, i: usize) -> Reader {
        let peer = &self.peers[i];
        let next = peer.replication.next_index;
        let voter = peer.voter || peer.voter_outgoing;
        if voter && !self.quorum_agrees(true, |p| p.replication.next_index > next) {
            Reader::Majority(Reverse(next))
        } else {
            Reader::Follower(Reverse(next))
        }
    }

    /// A heartbeat for peer `i`, if one is due.
    fn heartbeat_for(&mut self, i: usize) -> Option<Outgoing> {
        if self.peers[i].send_heartbeat {
            self.peers[i].send_heartbeat = false;
            // prev = matchIndex always passes the consistency check, so a heartbeat carries
            // the commit index without risking a rejection.
            let match_index = self.peers[i].replication.match_index;
            let (prev, prev_term) = match self.log.term(match_index) {
                Some(t) => (match_index, t),
                None => (0, 0),
            };
            return Some(Outgoing::Append {
                prev_log_index: prev,
                prev_log_term: prev_term,
                leader_commit: self.commit_index.min(prev),
                len: 0,
            });
        }
        None
    }

    /// How many entries from `next` go in one message: at least one, at most the entry
    /// and byte limits.
    fn batch_len(&self, next: Index, last: Index) -> usize {
        let mut len = 0usize;
        let mut bytes = 0usize;
        let mut index = next;
        while index <= last && len < self.cfg.max_entries_per_message {
            let Some(entry) = self.log.entry(index) else {
                break;
            };
            let size = entry.encoded_len_bound();
            if len > 0 && bytes + size > self.cfg.max_bytes_per_message {
                break;
            }
            bytes += size;
            len += 1;
            index += 1;
        }
        len
    }
}

/// Validation of an AppendEntries from the network: entries must be consecutive after
/// `prev_log_index`, with terms that never decrease, from `prev_log_term` up to the
/// leader's term.
fn entries_are_consistent(m: &AppendEntries<'_>) -> bool {
    if (m.prev_log_index == 0 && m.prev_log_term != 0) || m.prev_log_term > m.term {
        return false;
    }
    let mut expected_index = m.prev_log_index;
    let mut min_term = m.prev_log_term;
    let mut count = 0usize;
    for e in m.entries.iter() {
        let Some(index) = expected_index.checked_add(1) else {
            return false;
        };
        if e.index != index || e.term < min_term || e.term > m.term {
            return false;
        }
        expected_index = index;
        min_term = e.term;
        count += 1;
    }
    count == m.entries.len()
}
