//! Per-reason counters of dropped datagrams, for a driver to read and export.

use crate::open::OpenError;

/// How many datagrams [`crate::Opener::open`] dropped, one counter per
/// reason. Counters saturate instead of wrapping.
///
/// ```
/// use coracle_udp::{DropCounters, OpenError};
/// let mut drops = DropCounters::new();
/// drops.record(OpenError::Forged);
/// drops.record(OpenError::Forged);
/// drops.record(OpenError::Truncated);
/// assert_eq!(drops.forged, 2);
/// assert_eq!(drops.get(OpenError::Truncated), 1);
/// assert_eq!(drops.total(), 3);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropCounters {
    /// Shorter than a header and a tag ([`OpenError::Truncated`]).
    pub truncated: u64,
    /// Longer than the MTU ([`OpenError::Oversized`]).
    pub oversized: u64,
    /// Another protocol version ([`OpenError::WrongVersion`]).
    pub wrong_version: u64,
    /// Another cluster ([`OpenError::WrongCluster`]).
    pub wrong_cluster: u64,
    /// Addressed to another node ([`OpenError::NotForUs`]).
    pub not_for_us: u64,
    /// From a node not in the peer table ([`OpenError::UnknownSender`]).
    pub unknown_sender: u64,
    /// Counter already accepted ([`OpenError::Replayed`]).
    pub replayed: u64,
    /// Counter below the replay window ([`OpenError::TooOld`]).
    pub too_old: u64,
    /// Tag did not verify ([`OpenError::Forged`]).
    pub forged: u64,
}

impl DropCounters {
    /// All counters at zero.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            truncated: 0,
            oversized: 0,
            wrong_version: 0,
            wrong_cluster: 0,
            not_for_us: 0,
            unknown_sender: 0,
            replayed: 0,
            too_old: 0,
            forged: 0,
        }
    }

    fn slot(&mut self, reason: OpenError) -> &mut u64 {
        match reason {
            OpenError::Truncated => &mut self.truncated,
            OpenError::Oversized => &mut self.oversized,
            OpenError::WrongVersion => &mut self.wrong_version,
            OpenError::WrongCluster => &mut self.wrong_cluster,
            OpenError::NotForUs => &mut self.not_for_us,
            OpenError::UnknownSender => &mut self.unknown_sender,
            OpenError::Replayed => &mut self.replayed,
            OpenError::TooOld => &mut self.too_old,
            OpenError::Forged => &mut self.forged,
        }
    }

    /// Counts one datagram dropped for `reason`.
    pub fn record(&mut self, reason: OpenError) {
        let slot = self.slot(reason);
        *slot = slot.saturating_add(1);
    }

    /// The counter for `reason`.
    #[must_use]
    pub fn get(&self, reason: OpenError) -> u64 {
        match reason {
            OpenError::Truncated => self.truncated,
            OpenError::Oversized => self.oversized,
            OpenError::WrongVersion => self.wrong_version,
            OpenError::WrongCluster => self.wrong_cluster,
            OpenError::NotForUs => self.not_for_us,
            OpenError::UnknownSender => self.unknown_sender,
            OpenError::Replayed => self.replayed,
            OpenError::TooOld => self.too_old,
            OpenError::Forged => self.forged,
        }
    }

    /// All drops, whatever the reason.
    #[must_use]
    pub fn total(&self) -> u64 {
        OpenError::ALL
            .iter()
            .fold(0u64, |sum, &reason| sum.saturating_add(self.get(reason)))
    }

    /// `(reason, count)` for every reason, in [`OpenError::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (OpenError, u64)> + '_ {
        OpenError::ALL
            .iter()
            .map(move |&reason| (reason, self.get(reason)))
    }
}
