//! The send counter, and how it survives restarts without ever repeating.
//!
//! A sender must never use a counter twice: the counter is half of the
//! nonce (see [`crate::auth`]), and receivers drop repeated counters as
//! replays anyway. In RAM that is a simple increment; across a reboot the
//! board must know where it stopped. Writing the counter to flash on every
//! datagram would wear the flash out and slow every send, so the sender
//! writes a *high-water mark* now and then and leaves itself a stride `K` of
//! slack:
//!
//! - **Invariant:** every counter ever used is below `M + K`, where `M` is
//!   the mark that is durable in the host's store.
//! - **Boot:** [`SendCounter::resume`] with the persisted mark `M` starts at
//!   `M + K`, past every counter the previous run could have used (at `0`
//!   on the very first boot, when nothing was ever persisted). It may not
//!   send anything until a first mark of its own is durable.
//! - **Running:** when half of the slack is used up, [`SendCounter::persist_due`]
//!   asks for the current counter to be persisted as the new mark; the host
//!   writes it (flash, file + fsync), and only then reports it with
//!   [`SendCounter::persisted`], which moves the limit to `mark + K`. The
//!   other half of the slack keeps sends flowing while the write is under
//!   way; if the write is slower than that, [`SendCounter::next_counter`]
//!   returns [`CounterError::AwaitingPersist`] instead of breaking the
//!   invariant.
//!
//! So a store is written about every `K / 2` datagrams, a reboot skips at
//! most `K` counters, and a crash at any point (before, during or after a
//! write) never makes a counter come back. This crate does no I/O: the
//! host owns the store.
//!
//! ```
//! use coracle_udp::{CounterError, SendCounter};
//!
//! let mut store: Option<u64> = None; // stands for flash or a file
//! let mut counter = SendCounter::resume(store, 1000);
//! // Nothing may be sent before a first mark is durable.
//! assert_eq!(counter.next_counter(), Err(CounterError::AwaitingPersist));
//! let mut used = 0;
//! while used < 5000 {
//!     if let Some(mark) = counter.persist_due() {
//!         store = Some(mark); // write + flush, then:
//!         counter.persisted(mark);
//!     }
//!     counter.next_counter().expect("persisted in time");
//!     used += 1;
//! }
//! // Reboot: the new run starts past anything the old one used.
//! let mut rebooted = SendCounter::resume(store, 1000);
//! let mark = rebooted.persist_due().expect("a first mark is due");
//! rebooted.persisted(mark);
//! assert!(rebooted.next_counter().expect("fresh") >= 5000);
//! ```

use core::fmt;

/// Why [`SendCounter::next_counter`] gave no counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CounterError {
    /// Every counter covered by the durable mark is used: persist the mark
    /// [`SendCounter::persist_due`] returns, report it with
    /// [`SendCounter::persisted`], and try again.
    AwaitingPersist,
    /// The 64-bit counter space is used up (after 2^64 - 1 datagrams, or a
    /// corrupt mark near `u64::MAX`): this sender needs a new cluster key.
    Exhausted,
}

impl fmt::Display for CounterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AwaitingPersist => "send counter waits for a durable high-water mark",
            Self::Exhausted => "send counter exhausted",
        })
    }
}

impl core::error::Error for CounterError {}

/// A sender's counter: strictly increasing, across restarts too.
///
/// See the [module documentation](self) for the persistence protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendCounter {
    /// The next counter to hand out; `u64::MAX` is never handed out.
    next: u64,
    /// Counters below this are covered by the durable mark.
    limit: u64,
    /// The stride `K`.
    stride: u64,
}

impl SendCounter {
    /// Resumes after a boot from the last durable mark (`None` if the store
    /// was never written), with stride `stride` (`K`; 0 counts as 1).
    ///
    /// `stride` must be the same on every boot (or only ever grow): it is
    /// the slack the previous run may have used past its mark. A stride of
    /// 1 persists before every datagram; 1024 to 65536 suits flash.
    #[must_use]
    pub const fn resume(persisted: Option<u64>, stride: u64) -> Self {
        let stride = if stride == 0 { 1 } else { stride };
        let next = match persisted {
            Some(mark) => mark.saturating_add(stride),
            None => 0,
        };
        Self {
            next,
            limit: next,
            stride,
        }
    }

    /// The counter the next datagram will carry.
    #[must_use]
    pub const fn peek(&self) -> u64 {
        self.next
    }

    /// The stride `K`.
    #[must_use]
    pub const fn stride(&self) -> u64 {
        self.stride
    }

    /// How many counters can still be used before a new mark must be
    /// durable.
    #[must_use]
    pub const fn headroom(&self) -> u64 {
        self.limit.saturating_sub(self.next)
    }

    /// A mark to persist now, if one is due: when half the stride or less
    /// is left (right after [`Self::resume`] too). The host writes it to its
    /// store, waits until the write is durable, then calls
    /// [`Self::persisted`]. It keeps answering until then, so a host whose
    /// writes are asynchronous tracks the write it has in flight itself.
    #[must_use]
    pub const fn persist_due(&self) -> Option<u64> {
        if self.next == u64::MAX || self.headroom() > self.stride / 2 {
            None
        } else {
            Some(self.next)
        }
    }

    /// Reports that `mark` is now the durable value of the store: counters
    /// below `mark + stride` may be used. Pass a mark [`Self::persist_due`]
    /// returned (any value that is really in the store is safe).
    pub fn persisted(&mut self, mark: u64) {
        self.limit = mark.saturating_add(self.stride);
    }

    /// Takes the next counter.
    ///
    /// # Errors
    /// [`CounterError::AwaitingPersist`] when the durable mark covers no
    /// more counters, [`CounterError::Exhausted`] at the end of the space.
    pub fn next_counter(&mut self) -> Result<u64, CounterError> {
        if self.next == u64::MAX {
            return Err(CounterError::Exhausted);
        }
        if self.next >= self.limit {
            return Err(CounterError::AwaitingPersist);
        }
        let counter = self.next;
        self.next += 1;
        Ok(counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_boot_starts_at_zero_after_a_persist() {
        let mut c = SendCounter::resume(None, 8);
        assert_eq!(c.headroom(), 0);
        assert_eq!(c.next_counter(), Err(CounterError::AwaitingPersist));
        assert_eq!(c.persist_due(), Some(0));
        c.persisted(0);
        assert_eq!(c.persist_due(), None);
        for expected in 0..4 {
            assert_eq!(c.next_counter(), Ok(expected));
        }
        // Half the stride left: a new mark is due, sends still flow.
        assert_eq!(c.persist_due(), Some(4));
        for expected in 4..8 {
            assert_eq!(c.next_counter(), Ok(expected));
        }
        assert_eq!(c.next_counter(), Err(CounterError::AwaitingPersist));
        c.persisted(8);
        assert_eq!(c.next_counter(), Ok(8));
    }

    #[test]
    fn resume_jumps_past_the_mark_by_the_stride() {
        let c = SendCounter::resume(Some(100), 50);
        assert_eq!(c.peek(), 150);
        assert_eq!(c.persist_due(), Some(150));
    }

    #[test]
    fn stride_zero_counts_as_one() {
        let mut c = SendCounter::resume(None, 0);
        assert_eq!(c.stride(), 1);
        for expected in 0..3 {
            let mark = c.persist_due().expect("due before every send");
            c.persisted(mark);
            assert_eq!(c.next_counter(), Ok(expected));
            assert_eq!(c.next_counter(), Err(CounterError::AwaitingPersist));
        }
    }

    #[test]
    fn exhaustion_is_an_error_not_a_wrap() {
        let mut c = SendCounter::resume(Some(u64::MAX - 3), 2);
        assert_eq!(c.persist_due(), Some(u64::MAX - 1));
        c.persisted(u64::MAX - 1);
        assert_eq!(c.next_counter(), Ok(u64::MAX - 1));
        assert_eq!(c.next_counter(), Err(CounterError::Exhausted));
        assert_eq!(c.persist_due(), None);
        let mut c = SendCounter::resume(Some(u64::MAX - 1), 5);
        c.persisted(u64::MAX);
        assert_eq!(c.next_counter(), Err(CounterError::Exhausted));
    }

    #[test]
    fn a_stale_mark_lowers_the_limit() {
        let mut c = SendCounter::resume(None, 10);
        c.persisted(0);
        for _ in 0..6 {
            c.next_counter().expect("headroom");
        }
        c.persisted(6);
        assert_eq!(c.headroom(), 10);
        // The store went back to 0 (say, an older write landed last).
        c.persisted(0);
        assert_eq!(c.headroom(), 4);
    }
}
