//! What the checker says about a history that cannot be linearized.

use core::fmt;

use super::history::{Key, Operation, Output, Time, Value};

/// How many prefix operations [`Report`]'s `Display` shows before eliding the older ones
/// (the alternate form `{:#}` shows them all).
const SHOWN_PREFIX: usize = 10;

/// Why the operations of a key cannot be linearized.
///
/// The search explores the orders of the key's operations that respect real time, and
/// `Report` describes the order that got furthest, which is also the smallest failing
/// window: every order fails to place some operation before its completion time, and the
/// latest such time is [`deadline`](Self::deadline). The history of [`key`](Self::key) cut
/// just before the deadline (operations still running then left pending) is linearizable,
/// by [`prefix`](Self::prefix); cut at the deadline it is not: [`blocked`](Self::blocked)
/// must take effect by then, and after the prefix neither it nor any other operation
/// that could come next (the [`candidates`](Self::candidates)) fits, or (an indeterminate
/// one) leads to an order that does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The key whose sub-history is not linearizable.
    pub key: Key,
    /// The longest linearizable prefix found, in linearization order.
    pub prefix: Vec<Operation>,
    /// The value of the key after [`prefix`](Self::prefix).
    pub value_after_prefix: Option<Value>,
    /// The operation that must take effect before it completes, at
    /// [`deadline`](Self::deadline), but cannot.
    pub blocked: Operation,
    /// The completion time of [`blocked`](Self::blocked).
    pub deadline: Time,
    /// Every operation that could come next after the prefix (invoked by the deadline,
    /// not in the prefix; `blocked` is one of them), with why it cannot.
    pub candidates: Vec<Candidate>,
}

/// An operation that could have been linearized next after [`Report::prefix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The operation.
    pub operation: Operation,
    /// Why it cannot be next.
    pub verdict: Verdict,
}

/// Why a [`Candidate`] cannot be linearized next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its recorded output is not what the model returns at this point.
    WrongOutput {
        /// What the model returns here.
        model: Output,
    },
    /// It is indeterminate and would not change the value here, so placing it here is the
    /// same as leaving it out.
    NoEffect,
    /// It is indeterminate and would only replace a value that no operation reads or
    /// compares with by another such value: no operation could tell it happened, so
    /// placing it here is the same as leaving it out.
    Unobserved,
    /// It is indeterminate and could take effect here, but no order that places it here
    /// gets past the deadline either (the search tried them all).
    DeadEnd,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key;
        writeln!(
            f,
            "key {key}: no linearization of its operations up to t={}",
            self.deadline
        )?;
        if self.prefix.is_empty() {
            writeln!(
                f,
                "  longest linearizable prefix: empty (key {key} = {:?})",
                self.value_after_prefix
            )?;
        } else {
            writeln!(
                f,
                "  longest linearizable prefix ({} ops; then key {key} = {:?}):",
                self.prefix.len(),
                self.value_after_prefix
            )?;
            let skip = if f.alternate() {
                0
            } else {
                self.prefix.len().saturating_sub(SHOWN_PREFIX)
            };
            if skip > 0 {
                writeln!(f, "    ... {skip} earlier ops ({{:#}} shows them)")?;
            }
            for operation in &self.prefix[skip..] {
                writeln!(f, "    {operation}")?;
            }
        }
        writeln!(
            f,
            "  then none of these can come next, yet `{}` must take effect by t={}:",
            self.blocked, self.deadline
        )?;
        for (i, candidate) in self.candidates.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "    {}  ", candidate.operation)?;
            match candidate.verdict {
                Verdict::WrongOutput { model } => write!(f, "[model gives {model}]")?,
                Verdict::NoEffect => write!(f, "[would change nothing here]")?,
                Verdict::Unobserved => {
                    write!(f, "[would only write a value no operation observes]")?
                }
                Verdict::DeadEnd => write!(f, "[could come next, but leads to no order]")?,
            }
        }
        Ok(())
    }
}
