//! A linearizability checker for a key-value register model.
//!
//! Clients run [`Op`]s (put, get, delete, compare-and-set on `u64` keys and values)
//! against the cluster; the simulator records each one in a [`History`] with its
//! invocation and completion times, and [`check`] decides whether some sequential order
//! of the operations, respecting real time (an operation that completed before another
//! was invoked comes first), explains every output.
//!
//! Operations on different keys are independent, so each key's sub-history is checked on
//! its own (linearizability is compositional). The search is the Wing & Gong algorithm
//! with Lowe's memoization of explored configurations (as in porcupine), made to cope
//! with many indeterminate operations (configurations that others dominate are pruned,
//! values nobody observes are merged), bounded by a [`Budget`]: when the budget runs out
//! the answer is [`CheckResult::Unknown`] rather than a hang.
//!
//! A [`History`] displays as text, one operation per line, and parses back from it:
//! `sim --seed S --save-history FILE` saves one, `sim --check-history FILE` checks it.
//!
//! Operations whose client timed out ([`History::timeout`]), or that are still pending
//! when the check runs, are indeterminate, as in Jepsen/Knossos: they may have taken effect
//! at any time after their invocation, or never, and their output is unknown.
//!
//! ```
//! use coracle_tests::linearizability::{check, Budget, CheckResult, History, Op, Output};
//!
//! let mut history = History::new();
//! let put = history.invoke(1, 0, Op::Put { key: 1, value: 7 });
//! history.complete(put, 5, Output::Done)?;
//! // A read that starts after the write completed, yet misses it: a stale read.
//! let get = history.invoke(2, 10, Op::Get { key: 1 });
//! history.complete(get, 12, Output::Read(None))?;
//!
//! let CheckResult::NotLinearizable(report) = check(&history, Budget::default()) else {
//!     panic!("a stale read is not linearizable");
//! };
//! assert_eq!(report.key, 1);
//! println!("{report}");
//! # Ok::<(), coracle_tests::linearizability::HistoryError>(())
//! ```

use core::fmt;
use std::collections::BTreeMap;
use std::time::Instant;

mod history;
mod report;
mod search;
#[cfg(test)]
mod tests;

pub use history::{
    ClientId, History, HistoryError, Key, Op, OpId, Operation, Outcome, Output, ParseHistoryError,
    Time, Value,
};
pub use report::{Candidate, Report, Verdict};

/// How much work [`check`] may do before answering [`CheckResult::Unknown`].
///
/// A step is one move of the search (trying an operation, or backtracking); a step takes
/// 10 to 100 nanoseconds in release builds. The step limit applies to each key separately, so the verdict
/// for a key does not depend on the others; with only a step limit, checking is fully
/// deterministic. The deadline applies to the whole check (and makes the result depend
/// on the machine's speed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The most search steps spent on each key; `None` for no limit.
    pub max_steps: Option<u64>,
    /// When to give up; `None` for no deadline.
    pub deadline: Option<Instant>,
}

impl Budget {
    /// The step limit of [`Budget::default`], per key.
    pub const DEFAULT_MAX_STEPS: u64 = 10_000_000;

    /// No limit at all: the check may take exponential time on adversarial histories.
    pub const fn unlimited() -> Self {
        Self {
            max_steps: None,
            deadline: None,
        }
    }

    /// At most `max_steps` search steps per key, no deadline.
    pub const fn steps(max_steps: u64) -> Self {
        Self {
            max_steps: Some(max_steps),
            deadline: None,
        }
    }

    /// No step limit, but give up at `deadline`.
    pub const fn until(deadline: Instant) -> Self {
        Self {
            max_steps: None,
            deadline: Some(deadline),
        }
    }

    /// This budget, with a deadline too.
    pub const fn with_deadline(self, deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            ..self
        }
    }
}

impl Default for Budget {
    /// [`Budget::DEFAULT_MAX_STEPS`] steps per key (under a second in release builds), no
    /// deadline.
    fn default() -> Self {
        Self::steps(Self::DEFAULT_MAX_STEPS)
    }
}

/// The verdict of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Some order of the operations, respecting real time, explains every output.
    Linearizable,
    /// No such order exists for the operations of [`Report::key`] (the smallest such
    /// key, if several are bad).
    NotLinearizable(Report),
    /// The budget ran out before these keys (in increasing order) were decided; all the
    /// other keys are linearizable.
    Unknown {
        /// The undecided keys.
        keys: Vec<Key>,
    },
}

impl CheckResult {
    /// Whether the history was found linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }

    /// The report, if the history was found not linearizable.
    pub fn report(&self) -> Option<&Report> {
        match self {
            CheckResult::NotLinearizable(report) => Some(report),
            CheckResult::Linearizable | CheckResult::Unknown { .. } => None,
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => f.write_str("linearizable"),
            CheckResult::NotLinearizable(report) => {
                write!(f, "not linearizable: ")?;
                fmt::Display::fmt(report, f)
            }
            CheckResult::Unknown { keys } => {
                write!(f, "unknown: search budget exhausted for keys {keys:?}")
            }
        }
    }
}

/// Checks whether `history` is linearizable with respect to the key-value model (every
/// key starts absent), within `budget`.
///
/// Keys are checked one by one in increasing order; the first key found not linearizable
/// is reported.
pub fn check(history: &History, budget: Budget) -> CheckResult {
    let mut by_key: BTreeMap<Key, Vec<Operation>> = BTreeMap::new();
    for operation in history.operations() {
        by_key
            .entry(operation.op.key())
            .or_default()
            .push(*operation);
    }
    let mut undecided = Vec::new();
    for (key, operations) in by_key {
        match search::check_key(key, &operations, &budget) {
            search::KeyVerdict::Linearizable => {}
            search::KeyVerdict::NotLinearizable(report) => {
                return CheckResult::NotLinearizable(report);
            }
            search::KeyVerdict::Exhausted => undecided.push(key),
        }
    }
    if undecided.is_empty() {
        CheckResult::Linearizable
    } else {
        CheckResult::Unknown { keys: undecided }
    }
}
