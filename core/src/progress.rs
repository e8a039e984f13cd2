//! What a leader knows of each follower (thesis 6.x "progress"): the match and next indexes
//! of Figure 2, and whether it is probing for the point where the logs agree or streaming
//! entries with a bounded window of messages in flight.

use crate::types::Index;

/// How the leader replicates to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ProgressState {
    /// The leader does not know where the logs agree: one AppendEntries at a time, moving
    /// `next_index` back on each rejection.
    Probe,
    /// The logs agree up to `match_index`: entries stream ahead, up to the in-flight window.
    Replicate,
    /// The peer needs entries compacted away: the leader sends its snapshot, a chunk at a
    /// time.
    Snapshot,
}

/// A read-only view of a peer's replication progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Progress {
    /// `matchIndex`: highest index known to be replicated on the peer.
    pub match_index: Index,
    /// `nextIndex`: index of the next entry to send to the peer.
    pub next_index: Index,
    /// Probe or replicate.
    pub state: ProgressState,
    /// AppendEntries messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Heard from within the current check-quorum period.
    pub recent_active: bool,
}

/// The leader-side state for one peer.
#[derive(Clone, Debug)]
pub(crate) struct Replication<const I: usize> {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    /// In probe state: an AppendEntries was sent and no answer has come yet.
    pub probe_sent: bool,
    /// In probe state: the peer answered since the probe was sent, at the probe's
    /// `prevLogIndex`, without taking its entries (a full log, or the answer to a heartbeat
    /// while the probe was lost); the next tick sends the probe again.
    pub answered_since_probe: bool,
    /// Last index of each AppendEntries in flight, oldest first.
    pub inflight: heapless::Deque<Index, I>,
    pub recent_active: bool,
    /// Tick the retransmission timer counts from: the last increase of `match_index`, the
    /// sending of an AppendEntries into an empty window, or the last reset, whichever came
    /// last. What is in flight is sent again once `retransmit_ticks` pass from it.
    pub last_progress: u64,
    /// In snapshot state: the snapshot being sent, the next byte to send, and the offset
    /// the follower last said it expects.
    pub snapshot_index: Index,
    pub snapshot_sent: u64,
    pub snapshot_acked: u64,
    /// In snapshot state: the offset the follower's latest answer expects. Below
    /// `snapshot_acked` when it lost chunks it had taken (a restart, then a late copy of the
    /// first chunk) or when that answer was overtaken by a newer one.
    pub snapshot_heard: u64,
}

impl<const I: usize> Replication<I> {
    pub fn new(next_index: Index, now: u64) -> Self {
        Replication {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            answered_since_probe: false,
            inflight: heapless::Deque::new(),
            recent_active: false,
            last_progress: now,
            snapshot_index: 0,
            snapshot_sent: 0,
            snapshot_acked: 0,
            snapshot_heard: 0,
        }
    }

    /// Sends snapshot `index` from its start.
    pub fn become_snapshot(&mut self, index: Index, now: u64) {
        self.state = ProgressState::Snapshot;
        self.snapshot_index = index;
        self.snapshot_sent = 0;
        self.snapshot_acked = 0;
        self.snapshot_heard = 0;
        self.probe_sent = false;
        self.answered_since_probe = false;
        self.inflight.clear();
        self.last_progress = now;
    }

    /// Back to probing from the last known match.
    pub fn become_probe(&mut self, next_index: Index) {
        self.state = ProgressState::Probe;
        self.next_index = next_index.max(self.match_index + 1);
        self.probe_sent = false;
        self.answered_since_probe = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.answered_since_probe = false;
        self.inflight.clear();
    }

    /// Forgets the in-flight messages the peer has acknowledged through `index`.
    pub fn free_through(&mut self, index: Index) {
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
    }

    pub fn view(&self) -> Progress {
        Progress {
            match_index: self.match_index,
            next_index: self.next_index,
            state: self.state,
            inflight: self.inflight.len(),
            recent_active: self.recent_active,
        }
    }
}
