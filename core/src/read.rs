//! Linearizable reads without writing to the log: ReadIndex (thesis 6.4) and lease reads
//! (thesis 6.4.1), on the leader or forwarded to it by a follower.
//!
//! ReadIndex: the leader records its commit index (once it has committed an entry of its
//! own term, so that index covers every earlier committed entry), starts a new heartbeat
//! round, and releases the read when a quorum has answered a message of that round or a
//! later one: then it was still the leader after the read arrived. Reads that arrive before
//! the round's heartbeats leave share the round (batching). The host serves the read once it
//! has applied through the read index: [`Output::ReadReady`](crate::Output::ReadReady) comes
//! out after the [`Output::Apply`](crate::Output::Apply) of that index.
//!
//! Lease reads skip the round while the leader's lease holds: the leader knows no other
//! leader can be elected until an election timeout after a quorum last heard from it,
//! because voters that hear from a live leader ignore vote requests (leader stickiness).
//! The lease runs from the start of the newest heartbeat round a quorum answered, for
//! `election_ticks - lease_drift_ticks` ticks. **It relies on bounded clock drift**: if a
//! follower's clock can run faster than the leader's by more than the margin, a lease read
//! may be stale. It needs check-quorum; without it, lease reads fall back to ReadIndex.

use crate::message::{ReadIndex, ReadIndexResponse};
use crate::node::{Node, Outgoing};
use crate::storage::LogStorage;
use crate::types::{Index, NodeId, Role};
use core::fmt;

/// How a read is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReadMode {
    /// Confirm leadership with a heartbeat round (safe whatever the clocks do).
    ReadIndex,
    /// Serve at once while the leader's lease holds; fall back to ReadIndex otherwise.
    /// Relies on bounded clock drift.
    Lease,
}

/// Why a read was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReadError {
    /// No leader is known to serve or forward the read to.
    NoLeader,
    /// Too many reads are pending (the node's `R` capacity).
    Busy,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadError::NoLeader => "no leader known to serve the read",
            ReadError::Busy => "too many pending reads; retry later",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ReadError {}

/// The reads pending on this node and the leader's heartbeat rounds that confirm them.
#[derive(Clone, Debug)]
pub(crate) struct Reads<const R: usize> {
    pub pending: heapless::Vec<PendingRead, R>,
    /// The leader's heartbeat round (ReadIndex confirmation).
    pub round: u64,
    /// The current round's messages have not left yet: new reads can join it.
    pub round_open: bool,
    /// When recent rounds started: (round, tick).
    pub round_starts: heapless::Deque<(u64, u64), 16>,
    /// Start of the leader's lease (tick of the newest round a quorum answered).
    pub lease_start: Option<u64>,
}

impl<const R: usize> Reads<R> {
    pub fn new() -> Self {
        Reads {
            pending: heapless::Vec::new(),
            round: 0,
            round_open: false,
            round_starts: heapless::Deque::new(),
            lease_start: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadState {
    /// Leader: waits for the first commit of its term.
    AwaitingTermCommit,
    /// Leader: waits for a quorum to answer this heartbeat round.
    AwaitingQuorum { round: u64 },
    /// Leader: tell the follower that asked.
    Answer { to: NodeId, success: bool },
    /// Follower: to be sent to the leader.
    Forward,
    /// Follower: sent at this tick; waiting for the answer.
    Forwarded { since: u64 },
    /// Serve once applied through `index`.
    Ready,
    /// Tell the host it failed.
    Failed,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingRead {
    pub id: u64,
    /// The follower that asked the leader, if any.
    pub from: Option<NodeId>,
    pub index: Index,
    pub state: ReadState,
}

impl<S: LogStorage, const N: usize, const I: usize, const R: usize> Node<S, N, I, R> {
    /// Asks for a linearizable read with the host's `id`. The node answers with
    /// [`Output::ReadReady`](crate::Output::ReadReady) (serve it from the state machine now)
    /// or [`Output::ReadFailed`](crate::Output::ReadFailed) (retry, perhaps elsewhere).
    /// A follower forwards it to its leader.
    pub fn read(&mut self, id: u64, mode: ReadMode) -> Result<(), ReadError> {
        self.outbox.wake();
        if self.reads.pending.is_full() {
            return Err(ReadError::Busy);
        }
        if self.role == Role::Leader {
            self.register_read(id, None, mode);
            return Ok(());
        }
        if self.leader.is_none() {
            return Err(ReadError::NoLeader);
        }
        let _ = self.reads.pending.push(PendingRead {
            id,
            from: None,
            index: 0,
            state: ReadState::Forward,
        });
        Ok(())
    }

    /// The leader takes a read (its host's or a follower's).
    fn register_read(&mut self, id: u64, from: Option<NodeId>, mode: ReadMode) {
        let index = self.commit_index;
        let state = if !self.term_committed() {
            ReadState::AwaitingTermCommit
        } else if self.quorum_agrees(true, |_| false)
            || (mode == ReadMode::Lease && self.lease_holds())
        {
            self.confirmed(from)
        } else {
            ReadState::AwaitingQuorum {
                round: self.open_round(),
            }
        };
        let _ = self.reads.pending.push(PendingRead {
            id,
            from,
            index,
            state,
        });
    }

    fn confirmed(&self, from: Option<NodeId>) -> ReadState {
        match from {
            Some(to) => ReadState::Answer { to, success: true },
            None => ReadState::Ready,
        }
    }

    fn term_committed(&self) -> bool {
        self.log.term(self.commit_index) == Some(self.current_term)
    }

    /// The round reads registered now can use: the current one if its messages have not
    /// left yet, else a new one. Every peer gets a heartbeat of it.
    pub(crate) fn open_round(&mut self) -> u64 {
        if !self.reads.round_open {
            self.reads.round += 1;
            self.reads.round_open = true;
            if self.reads.round_starts.is_full() {
                self.reads.round_starts.pop_front();
            }
            let _ = self
                .reads
                .round_starts
                .push_back((self.reads.round, self.timers.now));
            for p in self.peers.iter_mut() {
                p.send_heartbeat = true;
            }
        }
        self.reads.round
    }

    /// The lease holds while no other leader can have been elected: a quorum answered a
    /// round that started less than `election_ticks - lease_drift_ticks` ago (voters ignore
    /// vote requests for `election_ticks` after hearing from the leader, and for as long
    /// after they start), and no leadership transfer is under way (its campaign bypasses
    /// that rule).
    fn lease_holds(&self) -> bool {
        let lease =
            (self.cfg.election_ticks as u64).saturating_sub(self.cfg.lease_drift_ticks as u64);
        self.cfg.check_quorum
            && self.transfer.is_none()
            && self
                .reads
                .lease_start
                .is_some_and(|start| self.timers.now < start + lease)
    }

    /// The newest round a quorum of voters has answered (the leader answers every round).
    fn quorum_round(&self) -> u64 {
        self.quorum_value(self.reads.round, |p| p.acked_round)
    }

    /// After answers or a commit of the leader's term: release what is confirmed.
    pub(crate) fn confirm_reads(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let acked = self.quorum_round();
        if let Some(&(_, start)) = self.reads.round_starts.iter().find(|(r, _)| *r == acked) {
            self.reads.lease_start = Some(self.reads.lease_start.map_or(start, |s| s.max(start)));
        }
        let term_committed = self.term_committed();
        let commit = self.commit_index;
        let mut need_round = false;
        for i in 0..self.reads.pending.len() {
            let read = self.reads.pending[i];
            match read.state {
                ReadState::AwaitingTermCommit if term_committed => {
                    self.reads.pending[i].index = commit;
                    need_round = true;
                }
                ReadState::AwaitingQuorum { round } if round <= acked => {
                    self.reads.pending[i].state = self.confirmed(read.from);
                }
                _ => {}
            }
        }
        if need_round {
            let round = self.open_round();
            for r in self.reads.pending.iter_mut() {
                if r.state == ReadState::AwaitingTermCommit {
                    r.state = ReadState::AwaitingQuorum { round };
                }
            }
            if self.quorum_agrees(true, |_| false) {
                self.confirm_reads();
            }
        }
    }

    /// A follower asks this node for a read index.
    pub(crate) fn on_read_index(&mut self, peer: usize, m: ReadIndex) {
        let from = self.peers[peer].id;
        if self.role == Role::Leader && !self.reads.pending.is_full() {
            self.register_read(m.id, Some(from), ReadMode::ReadIndex);
        } else {
            self.refuse_read_index(from, m.id);
        }
    }

    /// Answers the read `id` that node `to` asked for with a failure (this node cannot
    /// serve it); the answer carries the current term.
    pub(crate) fn refuse_read_index(&mut self, to: NodeId, id: u64) {
        let refusal = PendingRead {
            id,
            from: Some(to),
            index: 0,
            state: ReadState::Answer { to, success: false },
        };
        if self.reads.pending.push(refusal).is_err() {
            self.counters.stale += 1;
        }
    }

    /// The leader answered a forwarded read.
    pub(crate) fn on_read_index_response(&mut self, m: ReadIndexResponse) {
        let waiting = self.reads.pending.iter_mut().find(|r| {
            r.id == m.id && r.from.is_none() && matches!(r.state, ReadState::Forwarded { .. })
        });
        match waiting {
            Some(r) if m.success => {
                r.index = m.index;
                r.state = ReadState::Ready;
            }
            Some(r) => r.state = ReadState::Failed,
            None => self.counters.stale += 1,
        }
    }

    /// Every pending read fails (on a change of role, term or leader).
    pub(crate) fn fail_reads(&mut self) {
        for r in self.reads.pending.iter_mut() {
            r.state = match r.state {
                ReadState::Answer { to, .. } => ReadState::Answer { to, success: false },
                _ => ReadState::Failed,
            };
        }
        self.reads.lease_start = None;
    }

    /// Forwarded reads unanswered for an election timeout fail.
    pub(crate) fn expire_forwarded_reads(&mut self) {
        let timeout = self.cfg.election_ticks as u64;
        for r in self.reads.pending.iter_mut() {
            if let ReadState::Forwarded { since } = r.state {
                if self.timers.now >= since + timeout {
                    r.state = ReadState::Failed;
                }
            }
        }
    }

    /// When the next forwarded read expires.
    pub(crate) fn read_deadline(&self) -> u64 {
        self.reads
            .pending
            .iter()
            .filter_map(|r| match r.state {
                ReadState::Forwarded { since } => Some(since + self.cfg.election_ticks as u64),
                _ => None,
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// A read message for peer `i`: a forwarded request to the leader or an answer.
    pub(crate) fn read_message_for(&mut self, i: usize) -> Option<Outgoing> {
        let peer = self.peers[i].id;
        let term = self.current_term;
        let now = self.timers.now;
        let pos = self.reads.pending.iter().position(|r| match r.state {
            ReadState::Forward => self.leader == Some(peer),
            ReadState::Answer { to, .. } => to == peer,
            _ => false,
        })?;
        let read = self.reads.pending[pos];
        if let ReadState::Answer { success, .. } = read.state {
            self.reads.pending.remove(pos);
            return Some(Outgoing::ReadIndexResponse(ReadIndexResponse {
                term,
                id: read.id,
                index: read.index,
                success,
            }));
        }
        self.reads.pending[pos].state = ReadState::Forwarded { since: now };
        Some(Outgoing::ReadIndex(ReadIndex { term, id: read.id }))
    }

    /// The next read to hand to the host: ready and applied, or failed.
    pub(crate) fn next_read_output(&mut self) -> Option<crate::Output<'static>> {
        let applied = self.applied;
        let pos = self.reads.pending.iter().position(|r| {
            (r.state == ReadState::Ready && r.index <= applied) || r.state == ReadState::Failed
        })?;
        let read = self.reads.pending.remove(pos);
        Some(if read.state == ReadState::Ready {
            crate::Output::ReadReady {
                id: read.id,
                index: read.index,
            }
        } else {
            crate::Output::ReadFailed { id: read.id }
        })
    }
}
