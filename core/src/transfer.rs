//! Leadership transfer (thesis 3.10): the leader stops taking proposals, brings the target
//! up to date, and sends it TimeoutNow; the target campaigns at once, and voters do not
//! ignore its requests for having heard the old leader. The transfer aborts after an
//! election timeout if the target has not taken over.

use crate::message::TimeoutNow;
use crate::node::{Node, Outgoing};
use crate::storage::LogStorage;
use crate::types::{NodeId, Role};
use core::fmt;

/// Why a leadership transfer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TransferError {
    /// Only the leader can hand leadership over.
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The target is not a voting member (or is this node).
    NotAVoter,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::NotLeader { .. } => {
                f.write_str("only the leader can transfer leadership")
            }
            TransferError::NotAVoter => f.write_str("the target is not another voting member"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TransferError {}

/// A transfer under way.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    pub target: NodeId,
    pub deadline: u64,
    pub sent: bool,
}

impl<S: LogStorage, const N: usize, const I: usize, const R: usize> Node<S, N, I, R> {
    /// Hands leadership to `target`. Proposals are refused until the transfer ends: the
    /// target wins, or an election timeout passes and this node leads on. A new request
    /// replaces one under way.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        self.outbox.wake();
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        let voter = self.peer_index(target).is_some_and(|i| self.peers[i].voter);
        if !voter {
            return Err(TransferError::NotAVoter);
        }
        self.transfer = Some(Transfer {
            target,
            deadline: self.timers.now + self.cfg.election_ticks as u64,
            sent: false,
        });
        self.maybe_send_timeout_now();
        Ok(())
    }

    /// The target of the transfer under way, if any.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.target)
    }

    /// Once the target holds the whole log, it gets TimeoutNow.
    pub(crate) fn maybe_send_timeout_now(&mut self) {
        let Some(t) = self.transfer else { return };
        let Some(i) = self.peer_index(t.target) else {
            return;
        };
        if !t.sent && self.peers[i].replication.match_index == self.log.last_index() {
            self.peers[i].send_timeout_now = true;
            self.transfer = Some(Transfer { sent: true, ..t });
        }
    }

    /// TimeoutNow has no answer, and a transport may lose it (the server binding sends it
    /// as a QUIC datagram): each heartbeat while the transfer lasts sends it again to a
    /// target that holds the whole log. A duplicate does no harm: the target campaigns only
    /// while it follows this leader.
    pub(crate) fn resend_timeout_now(&mut self) {
        if let Some(t) = self.transfer.filter(|t| t.sent) {
            self.transfer = Some(Transfer { sent: false, ..t });
            self.maybe_send_timeout_now();
        }
    }

    pub(crate) fn abort_transfer_if_due(&mut self) {
        if self.transfer.is_some_and(|t| self.timers.now >= t.deadline) {
            self.transfer = None;
            self.counters.transfers_aborted += 1;
        }
    }

    /// The leader says: campaign now.
    pub(crate) fn on_timeout_now(&mut self, peer: usize) {
        if self.role != Role::Follower || self.leader != Some(self.peers[peer].id) {
            self.counters.stale += 1;
            return;
        }
        // A stalled node cannot make its own vote durable: it lets the transfer time out.
        if self.can_vote() && !self.durability.stalled {
            self.become_candidate(true);
        }
    }

    pub(crate) fn timeout_now_for(&mut self, i: usize) -> Option<Outgoing> {
        if !self.peers[i].send_timeout_now {
            return None;
        }
        self.peers[i].send_timeout_now = false;
        Some(Outgoing::TimeoutNow(TimeoutNow {
            term: self.current_term,
        }))
    }
}
