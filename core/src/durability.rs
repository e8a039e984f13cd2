//! The durability contract (Figure 2, "persistent state ... updated on stable storage before
//! responding to RPCs"; thesis 10.2.1 for the leader).
//!
//! Every write the node makes to its [`LogStorage`](crate::LogStorage) gets a sequence
//! number. The node asks the host to make writes durable with
//! [`Output::Sync`](crate::Output::Sync) carrying the latest number, and the host answers
//! with [`Node::synced`](crate::Node::synced) once they are: many writes, one flush. Answers
//! and votes wait for the writes they depend on; the leader counts itself in a quorum only
//! for entries that are durable.

use crate::types::Index;

/// The token of [`Output::Sync`](crate::Output::Sync): every write made before it was
/// announced must be durable when the host hands it back to
/// [`Node::synced`](crate::Node::synced).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SyncToken(pub u64);

/// A message that may leave only once the writes up to `after` are durable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gated<M> {
    pub message: M,
    pub after: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Durability {
    /// Sequence number of the latest write.
    pub last_write: u64,
    /// Latest sequence number handed out in `Output::Sync`.
    requested: u64,
    /// Latest sequence number the host reported durable.
    pub synced: u64,
    /// The prefix of the current log that is durable.
    pub durable_index: Index,
    /// Writes not yet durable: (sequence number, last index of the log after it), clipped
    /// by later truncations.
    pending: heapless::Deque<(u64, Index), 8>,
    /// A write failed: nothing that depends on durability leaves any more.
    pub failed: bool,
}

impl Durability {
    pub fn new(durable_index: Index) -> Self {
        Durability {
            last_write: 0,
            requested: 0,
            synced: 0,
            durable_index,
            pending: heapless::Deque::new(),
            failed: false,
        }
    }

    /// A write happened; the log now ends at `last_index`.
    pub fn record_write(&mut self, last_index: Index) {
        self.last_write += 1;
        if self.pending.is_full() {
            // Merge with the newest record: the older point becomes durable only with it.
            self.pending.pop_back();
        }
        let _ = self.pending.push_back((self.last_write, last_index));
    }

    /// The log was cut to end before `from`.
    pub fn record_truncation(&mut self, from: Index) {
        let end = from.saturating_sub(1);
        self.durable_index = self.durable_index.min(end);
        for (_, last) in self.pending.iter_mut() {
            *last = (*last).min(end);
        }
    }

    pub fn take_sync_request(&mut self) -> Option<SyncToken> {
        if self.failed || self.last_write <= self.requested {
            return None;
        }
        self.requested = self.last_write;
        Some(SyncToken(self.requested))
    }

    /// The host made writes through `token` durable.
    pub fn synced(&mut self, token: SyncToken) {
        // A token from the future (a confused host) must not release anything unwritten.
        let through = token.0.min(self.requested);
        if through <= self.synced {
            return;
        }
        self.synced = through;
        while let Some(&(write, last)) = self.pending.front() {
            if write > through {
                break;
            }
            self.durable_index = last;
            self.pending.pop_front();
        }
    }

    /// May a message gated on `after` leave?
    pub fn released(&self, after: u64) -> bool {
        !self.failed && after <= self.synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_index_follows_synced_writes_and_truncations() {
        let mut d = Durability::new(0);
        d.record_write(3);
        d.record_write(5);
        let t = d.take_sync_request().unwrap();
        assert_eq!(t, SyncToken(2));
        assert!(d.take_sync_request().is_none());
        d.record_truncation(4);
        d.record_write(3);
        d.record_write(6);
        d.synced(SyncToken(1));
        assert_eq!(d.durable_index, 3);
        d.synced(t);
        assert_eq!(
            d.durable_index, 3,
            "entries 4..5 were cut before becoming durable"
        );
        assert!(!d.released(4));
        let t = d.take_sync_request().unwrap();
        d.synced(SyncToken(99));
        assert_eq!(
            d.synced, t.0,
            "a token never released writes that were not announced"
        );
        assert_eq!(d.durable_index, 6);
        assert!(d.released(4));
    }

    #[test]
    fn many_writes_between_syncs_merge_conservatively() {
        let mut d = Durability::new(0);
        for i in 1..=20 {
            d.record_write(i);
        }
        let t = d.take_sync_request().unwrap();
        d.synced(SyncToken(10));
        assert!(d.durable_index <= 10);
        d.synced(t);
        assert_eq!(d.durable_index, 20);
    }
}
