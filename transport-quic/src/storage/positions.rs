//! Where each entry of the log is: its segment and the offset of its record, its term (as
//! runs of one term), which entries are membership entries, and a running count of the
//! records' bytes (so the bytes of the log after any index are a subtraction: a leader's
//! lag of a follower in bytes). The log keeps this in memory (16 bytes an entry and a few
//! per term), never the entries' data: reads go to the segment files.

use coracle::{EntryKind, Index, Term};
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;

/// The positions of the entries `first..=last`.
#[derive(Clone, Debug)]
pub(crate) struct Positions {
    /// Index of the first entry kept.
    pub first: Index,
    /// Term of entry `first - 1`.
    pub compacted_term: Term,
    /// Offset of each entry's record in its segment, from `first`.
    offsets: VecDeque<u64>,
    /// The running count of record bytes through each entry, from `first`.
    ends: VecDeque<u64>,
    /// The running count through entry `first - 1` (where `ends` starts).
    end_before_first: u64,
    /// (first index, term) of each run of one term, in order.
    runs: VecDeque<(Index, Term)>,
    /// The membership entries.
    configs: BTreeSet<Index>,
    /// Base index and path of each segment, oldest first.
    pub segments: Vec<(Index, PathBuf)>,
}

impl Default for Positions {
    /// An empty log, never compacted.
    fn default() -> Self {
        Positions::empty_after(0, 0)
    }
}

impl Positions {
    /// No entry: the log goes on after `index` (of `term`).
    pub fn empty_after(index: Index, term: Term) -> Positions {
        Positions {
            first: index + 1,
            compacted_term: term,
            offsets: VecDeque::new(),
            ends: VecDeque::new(),
            end_before_first: 0,
            runs: VecDeque::new(),
            configs: BTreeSet::new(),
            segments: Vec::new(),
        }
    }

    /// Index of the last entry (`first - 1` when there is none).
    pub fn last_index(&self) -> Index {
        self.first + self.offsets.len() as u64 - 1
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Term of `index`, for `first - 1..=last`.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index + 1 == self.first {
            return Some(self.compacted_term);
        }
        if index < self.first || index > self.last_index() {
            return None;
        }
        let run = self.runs.partition_point(|&(start, _)| start <= index);
        run.checked_sub(1).map(|r| self.runs[r].1)
    }

    /// Offset of the record of `index` in its segment.
    pub fn offset(&self, index: Index) -> Option<u64> {
        let pos = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.offsets.get(pos).copied()
    }

    /// Which segment (position in `segments`) holds `index`.
    pub fn segment_of(&self, index: Index) -> usize {
        self.segments
            .partition_point(|(base, _)| *base <= index)
            .saturating_sub(1)
    }

    /// Bytes of the records of the entries after `index` (all of them when `index` is
    /// before `first`; none when it is the last or later). No scan: a subtraction.
    pub fn bytes_after(&self, index: Index) -> u64 {
        let end = self.ends.back().copied().unwrap_or(self.end_before_first);
        let from = match index.checked_sub(self.first) {
            None => self.end_before_first,
            Some(pos) => usize::try_from(pos)
                .ok()
                .and_then(|pos| self.ends.get(pos).copied())
                .unwrap_or(end),
        };
        end - from
    }

    /// Is `index` a membership entry?
    pub fn is_config(&self, index: Index) -> bool {
        self.configs.contains(&index)
    }

    /// Adds entry `last + 1`, whose record of `len` bytes is at `offset` of its segment.
    pub fn push(&mut self, term: Term, kind: EntryKind, offset: u64, len: u64) {
        let index = self.last_index() + 1;
        if self.runs.back().is_none_or(|&(_, t)| t != term) {
            self.runs.push_back((index, term));
        }
        if kind == EntryKind::Membership {
            self.configs.insert(index);
        }
        self.offsets.push_back(offset);
        let end = self.ends.back().copied().unwrap_or(self.end_before_first);
        self.ends.push_back(end + len);
        debug_assert_eq!(self.ends.len(), self.offsets.len());
    }

    /// Drops the entries `from..`.
    pub fn truncate(&mut self, from: Index) {
        let from = from.max(self.first);
        if from > self.last_index() {
            return;
        }
        self.offsets.truncate((from - self.first) as usize);
        self.ends.truncate((from - self.first) as usize);
        while self.runs.back().is_some_and(|&(start, _)| start >= from) {
            self.runs.pop_back();
        }
        self.configs.retain(|&i| i < from);
    }

    /// Drops the entries `first..=through` (`term` is the term of `through`).
    pub fn forget_through(&mut self, through: Index, term: Term) {
        let n = usize::try_from(through + 1 - self.first)
            .unwrap_or(usize::MAX)
            .min(self.offsets.len());
        self.offsets.drain(..n);
        if let Some(&end) = n.checked_sub(1).and_then(|last| self.ends.get(last)) {
            self.end_before_first = end;
        }
        self.ends.drain(..n);
        let keep = self
            .runs
            .partition_point(|&(start, _)| start <= through + 1);
        self.runs.drain(..keep.saturating_sub(1));
        if let Some(run) = self.runs.front_mut() {
            run.0 = run.0.max(through + 1);
        }
        if self.offsets.is_empty() {
            self.runs.clear();
        }
        self.configs.retain(|&i| i > through);
        self.first = through + 1;
        self.compacted_term = term;
    }

    /// Drops every entry: the log goes on after `index` (of `term`).
    pub fn reset(&mut self, index: Index, term: Term) {
        self.offsets.clear();
        self.ends.clear();
        self.runs.clear();
        self.configs.clear();
        self.first = index + 1;
        self.compacted_term = term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_offsets_and_configurations_follow_truncation_and_compaction() {
        let mut p = Positions::empty_after(0, 0);
        for i in 1..=10u64 {
            let kind = if i == 4 {
                EntryKind::Membership
            } else {
                EntryKind::Command
            };
            p.push(1 + i / 4, kind, i * 100, 100);
        }
        assert_eq!(p.last_index(), 10);
        assert_eq!(
            (
                p.bytes_after(0),
                p.bytes_after(3),
                p.bytes_after(10),
                p.bytes_after(99)
            ),
            (1000, 700, 0, 0)
        );
        assert_eq!(
            (0..=10).map(|i| p.term(i).unwrap()).collect::<Vec<_>>(),
            [0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
        );
        assert_eq!(p.offset(7), Some(700));
        assert!(p.is_config(4));
        p.truncate(9);
        assert_eq!((p.last_index(), p.term(9)), (8, None));
        p.push(7, EntryKind::Command, 1, 100);
        assert_eq!(p.term(9), Some(7));
        p.forget_through(5, 2);
        assert_eq!(
            (p.first, p.term(5), p.term(6), p.term(4)),
            (6, Some(2), Some(2), None)
        );
        assert!(!p.is_config(4), "compacted with its entry");
        assert_eq!(p.offset(6), Some(600));
        // Entries 6..=9 (100 bytes each) are kept: before the first, all of them.
        assert_eq!(
            (p.bytes_after(2), p.bytes_after(5), p.bytes_after(8)),
            (400, 400, 100)
        );
        p.forget_through(9, 7);
        assert_eq!((p.first, p.last_index(), p.term(9)), (10, 9, Some(7)));
        p.push(8, EntryKind::Command, 5, 100);
        assert_eq!(p.term(10), Some(8));
        assert_eq!((p.bytes_after(9), p.bytes_after(0)), (100, 100));
        p.reset(20, 9);
        assert_eq!((p.first, p.last_index(), p.term(20)), (21, 20, Some(9)));
        assert_eq!(p.bytes_after(3), 0);
        p.push(9, EntryKind::Command, 5, 30);
        assert_eq!((p.bytes_after(20), p.bytes_after(21)), (30, 0));
    }
}
