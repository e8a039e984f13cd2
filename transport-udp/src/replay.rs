//! Replay protection: a sliding window over the counters of one sender.
//!
//! The window remembers the highest counter accepted so far and, in a 64-bit
//! bitmap, which of the [`REPLAY_WINDOW`] counters just below it have been
//! accepted too (the scheme of IPsec, RFC 4303 §3.4.3, and WireGuard). A
//! counter is accepted once if it is above the highest, or within the window
//! and not yet seen; it is rejected as [`ReplayError::Replayed`] if it was
//! already seen and as [`ReplayError::TooOld`] if it fell below the window,
//! where the window can no longer tell. So datagrams reordered by less than
//! 64 positions are all delivered, exactly once.
//!
//! The window is checked before the tag (to spend no cipher work on a
//! datagram that would be dropped anyway) but updated only after the tag has
//! verified: a forged datagram can never move it.
//!
//! The window lives in RAM. A receiver that restarts starts with empty
//! windows and will accept, once each, old datagrams an attacker recorded
//! before the restart; Raft tolerates such duplicates (stale terms and
//! indexes are ignored), and senders keep moving forward, so the window
//! closes behind them again after the first fresh datagram of each peer.

use core::fmt;

/// How many counters below the highest one a [`ReplayWindow`] remembers.
pub const REPLAY_WINDOW: u64 = 64;

/// Why a counter was refused by a [`ReplayWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplayError {
    /// This counter was already accepted once.
    Replayed,
    /// This counter is [`REPLAY_WINDOW`] or more below the highest accepted
    /// one: the window cannot tell whether it was seen.
    TooOld,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Replayed => "counter already seen",
            Self::TooOld => "counter below the replay window",
        })
    }
}

impl core::error::Error for ReplayError {}

/// A sliding replay window over one sender's counters.
///
/// ```
/// use coracle_udp::{ReplayError, ReplayWindow};
/// let mut w = ReplayWindow::new();
/// for c in [5, 3, 100] {
///     assert_eq!(w.check(c), Ok(()));
///     w.accept(c);
/// }
/// assert_eq!(w.check(100), Err(ReplayError::Replayed));
/// assert_eq!(w.check(99), Ok(()));
/// assert_eq!(w.check(5), Err(ReplayError::TooOld));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest accepted counter, `None` before the first.
    highest: Option<u64>,
    /// Bit `i` set: counter `highest - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// An empty window: the first counter, whatever it is, is accepted.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            highest: None,
            seen: 0,
        }
    }

    /// The highest counter accepted so far.
    #[must_use]
    pub const fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Whether `counter` would be accepted. Does not change the window.
    ///
    /// # Errors
    /// [`ReplayError::Replayed`] or [`ReplayError::TooOld`], see the type.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        let behind = highest - counter;
        if behind >= REPLAY_WINDOW {
            Err(ReplayError::TooOld)
        } else if self.seen & (1u64 << behind) != 0 {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records `counter` as accepted. Call it only after [`Self::check`]
    /// passed and the datagram's tag verified; on a counter that `check`
    /// refuses it does nothing.
    pub fn accept(&mut self, counter: u64) {
        match self.highest {
            None => {
                self.highest = Some(counter);
                self.seen = 1;
            }
            Some(highest) if counter > highest => {
                let ahead = counter - highest;
                self.seen = if ahead >= REPLAY_WINDOW {
                    1
                } else {
                    (self.seen << ahead) | 1
                };
                self.highest = Some(counter);
            }
            Some(highest) => {
                let behind = highest - counter;
                if behind < REPLAY_WINDOW {
                    self.seen |= 1u64 << behind;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(w: &mut ReplayWindow, c: u64) -> Result<(), ReplayError> {
        w.check(c)?;
        w.accept(c);
        Ok(())
    }

    #[test]
    fn in_order_then_duplicates() {
        let mut w = ReplayWindow::new();
        for c in 0..200 {
            assert_eq!(feed(&mut w, c), Ok(()));
            assert_eq!(feed(&mut w, c), Err(ReplayError::Replayed));
        }
        assert_eq!(w.highest(), Some(199));
    }

    #[test]
    fn reordered_within_window_accepted_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(feed(&mut w, 1000), Ok(()));
        for c in (1000 - (REPLAY_WINDOW - 1)..1000).rev() {
            assert_eq!(feed(&mut w, c), Ok(()), "{c}");
        }
        for c in 1000 - (REPLAY_WINDOW - 1)..=1000 {
            assert_eq!(feed(&mut w, c), Err(ReplayError::Replayed), "{c}");
        }
        assert_eq!(feed(&mut w, 1000 - REPLAY_WINDOW), Err(ReplayError::TooOld));
        assert_eq!(feed(&mut w, 0), Err(ReplayError::TooOld));
    }

    #[test]
    fn jump_ahead_keeps_what_is_still_in_window() {
        let mut w = ReplayWindow::new();
        for c in [10, 12, 14] {
            assert_eq!(feed(&mut w, c), Ok(()));
        }
        assert_eq!(feed(&mut w, 40), Ok(()));
        assert_eq!(feed(&mut w, 12), Err(ReplayError::Replayed));
        assert_eq!(feed(&mut w, 13), Ok(()));
        assert_eq!(feed(&mut w, 40 + REPLAY_WINDOW), Ok(()));
        assert_eq!(feed(&mut w, 41), Ok(()));
        assert_eq!(feed(&mut w, 40), Err(ReplayError::TooOld));
        // A huge jump clears the bitmap without overflowing the shift.
        assert_eq!(feed(&mut w, u64::MAX - 1), Ok(()));
        assert_eq!(feed(&mut w, u64::MAX - 2), Ok(()));
        assert_eq!(feed(&mut w, u64::MAX - 1), Err(ReplayError::Replayed));
        assert_eq!(feed(&mut w, u64::MAX), Ok(()));
        assert_eq!(feed(&mut w, u64::MAX), Err(ReplayError::Replayed));
    }

    #[test]
    fn accept_of_refused_counter_is_harmless() {
        let mut w = ReplayWindow::new();
        w.accept(500);
        let before = w;
        w.accept(0);
        assert_eq!(w, before);
    }
}
