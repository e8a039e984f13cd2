//! Proposals held during a leadership transfer.
//!
//! While a leader hands leadership over (thesis 3.10; [`Handle::transfer_leadership`], or a
//! leader asked to shut down), the core refuses proposals so the target can catch up. A
//! refusal sent back as "busy, retry" costs the client a pause and a search for the new
//! leader; instead the host holds the proposals here and releases them when the transfer
//! ends: proposed at once if this node still leads (the transfer was abandoned), answered
//! [`ProposeError::NotLeader`] with the new leader and where it listens once this node
//! follows it, so the client goes there without a pause. A node that knows no leader (it
//! just voted for the target, or an election is under way) holds proposals the same way
//! until one is known. A proposal is held for an election timeout at most (the core gives
//! a transfer as long), then refused: busy if this node still leads, else "not leader"
//! with no leader known.
//!
//! [`Handle::transfer_leadership`]: super::Handle::transfer_leadership
//! [`ProposeError::NotLeader`]: super::ProposeError::NotLeader

use std::time::{Duration, Instant};

/// The most proposals held at once; more are refused as busy (memory stays bounded
/// whatever the clients send during a transfer).
pub(crate) const MAX_HELD: usize = 4096;

/// What happens to the held proposals now ([`Held::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Keep holding: the transfer is under way, or this node follows no leader yet.
    Wait,
    /// This node still leads and transfers nothing: propose them.
    Propose,
    /// This node follows another leader: send them there.
    Redirect,
    /// Held too long (or the node stops with no leader known): refuse them.
    Refuse,
}

/// Proposals (their entry bytes and who waits for the outcome) held while a transfer is
/// under way.
pub(crate) struct Held<P> {
    entries: Vec<(Vec<u8>, P)>,
    /// When the oldest held proposal came.
    since: Option<Instant>,
    /// How long a proposal is held at most.
    limit: Duration,
}

impl<P> Held<P> {
    /// Holds proposals for `limit` at most.
    pub(crate) fn new(limit: Duration) -> Self {
        Held {
            entries: Vec::new(),
            since: None,
            limit,
        }
    }

    /// Holds the proposal of `entry`, or gives `pending` back if [`MAX_HELD`] are held.
    pub(crate) fn hold(&mut self, entry: &[u8], pending: P, now: Instant) -> Result<(), P> {
        if self.entries.len() >= MAX_HELD {
            return Err(pending);
        }
        self.since.get_or_insert(now);
        self.entries.push((entry.to_vec(), pending));
        Ok(())
    }

    /// When the oldest held proposal must be answered at the latest.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.limit)
    }

    /// Whether no proposal is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What to do with the held proposals at `now`, for a node that `leads` (and is still
    /// `transferring`, or not), follows `leader` (another node), or is `stopping`.
    pub(crate) fn decide(
        &self,
        now: Instant,
        leads: bool,
        transferring: bool,
        leader: Option<u64>,
        stopping: bool,
    ) -> Release {
        if self.entries.is_empty() {
            return Release::Wait;
        }
        let expired = self.deadline().is_some_and(|d| now >= d);
        match (leads, transferring, leader) {
            (false, _, Some(_)) => Release::Redirect,
            (true, false, _) if !stopping => Release::Propose,
            _ if expired || stopping => Release::Refuse,
            _ => Release::Wait,
        }
    }

    /// Takes every held proposal, oldest first.
    pub(crate) fn take(&mut self) -> Vec<(Vec<u8>, P)> {
        self.since = None;
        std::mem::take(&mut self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::{Held, Release, MAX_HELD};
    use std::time::{Duration, Instant};

    const LIMIT: Duration = Duration::from_millis(300);

    fn held(n: usize, at: Instant) -> Held<usize> {
        let mut h = Held::new(LIMIT);
        for i in 0..n {
            assert!(h.hold(&[i as u8], i, at).is_ok());
        }
        h
    }

    #[test]
    fn nothing_held_means_nothing_to_do() {
        let now = Instant::now();
        let h = held(0, now);
        assert_eq!(
            h.decide(now + LIMIT, false, false, None, true),
            Release::Wait
        );
        assert_eq!(h.deadline(), None);
    }

    #[test]
    fn held_while_the_transfer_is_under_way_then_redirected_to_the_new_leader() {
        let t = Instant::now();
        let h = held(3, t);
        // Transfer under way; then stepped down with no leader known yet (the vote).
        assert_eq!(h.decide(t, true, true, None, false), Release::Wait);
        assert_eq!(h.decide(t, false, false, None, false), Release::Wait);
        // The new leader's first AppendEntries names it.
        assert_eq!(h.decide(t, false, false, Some(2), false), Release::Redirect);
        // Also when this node stops, and even after the limit: a redirect is an answer.
        assert_eq!(
            h.decide(t + LIMIT, false, false, Some(2), true),
            Release::Redirect
        );
    }

    #[test]
    fn proposed_if_the_transfer_was_abandoned() {
        let t = Instant::now();
        let h = held(1, t);
        assert_eq!(h.decide(t, true, false, Some(1), false), Release::Propose);
        // Not by a node that stops.
        assert_eq!(h.decide(t, true, false, Some(1), true), Release::Refuse);
    }

    #[test]
    fn refused_after_the_limit_or_when_stopping_with_no_leader_known() {
        let t = Instant::now();
        let h = held(2, t);
        assert_eq!(h.deadline(), Some(t + LIMIT));
        assert_eq!(
            h.decide(t + LIMIT, true, true, None, false),
            Release::Refuse
        );
        assert_eq!(
            h.decide(t + LIMIT, false, false, None, false),
            Release::Refuse
        );
        assert_eq!(h.decide(t, false, false, None, true), Release::Refuse);
        assert_eq!(h.decide(t, true, true, None, true), Release::Refuse);
    }

    #[test]
    fn bounded_and_taken_oldest_first() {
        let t = Instant::now();
        let mut h = held(MAX_HELD, t);
        assert_eq!(h.hold(&[0], 7, t), Err(7));
        let taken = h.take();
        assert_eq!(taken.len(), MAX_HELD);
        assert!(taken.iter().enumerate().all(|(i, (_, p))| *p == i));
        assert!(h.take().is_empty());
        assert_eq!(h.deadline(), None);
        // The limit counts from the oldest proposal held since the last release.
        let later = t + Duration::from_millis(50);
        assert!(h.hold(&[1], 1, later).is_ok());
        assert_eq!(h.deadline(), Some(later + LIMIT));
    }
}
