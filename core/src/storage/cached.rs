//! [`CachedLog`]: a memory log bounded by a byte budget, for logs that live on disk.

use super::{LogStorage, OwnedEntry, SnapshotMeta, StorageError};
use crate::types::{Entry, EntryKind, HardState, Index, Term};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

/// Is an entry of this kind one a bounded memory log must keep (a configuration)?
fn pinned(kind: EntryKind) -> bool {
    kind == EntryKind::Membership
}

/// Bytes an entry counts for in the budget besides its data.
const ENTRY_OVERHEAD: usize = core::mem::size_of::<OwnedEntry>();

/// A memory log for a host whose log lives in a durable store that can read entries back
/// (a file log): the terms of the whole log (as runs, a few bytes per term), the newest
/// entries' data up to `budget` bytes, a window of older entries read back on the node's
/// request ([`Output::Fetch`](crate::Output::Fetch)), and every membership entry. Memory is
/// bounded by the budget (plus the runs and the configurations), not by the log's length.
///
/// The node tells it which entries are durable and applied ([`LogStorage::release`]); it
/// drops the data of the oldest of those once the newest entries take more than the budget.
///
/// ```
/// use coracle::{CachedLog, Entry, EntryKind, LogStorage};
/// let mut log = CachedLog::new(64);
/// for i in 1..=10 {
///     log.append(&Entry { index: i, term: 1, kind: EntryKind::Command, data: &[0; 20] }).unwrap();
/// }
/// log.release(10); // durable and applied: the oldest may go
/// assert!(log.entry(1).is_none() && log.term(1) == Some(1));
/// assert!(log.entry(10).is_some());
/// ```
#[derive(Clone, Debug)]
pub struct CachedLog {
    /// Index of the first entry kept.
    first: Index,
    /// Term of entry `first - 1`.
    compacted_term: Term,
    last: Index,
    /// (first index, term) of each run of one term among `first..=last`, in order.
    runs: VecDeque<(Index, Term)>,
    /// The entries `last - tail.len() + 1 ..= last`, with their data.
    tail: VecDeque<OwnedEntry>,
    tail_bytes: usize,
    /// Consecutive older entries read back from the durable store.
    window: VecDeque<OwnedEntry>,
    window_bytes: usize,
    /// Membership entries older than the tail.
    configs: BTreeMap<Index, OwnedEntry>,
    budget: usize,
    released: Index,
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    chunk: Vec<u8>,
}

fn cost(e: &OwnedEntry) -> usize {
    e.data.len() + ENTRY_OVERHEAD
}

impl CachedLog {
    /// An empty log that keeps about `budget` bytes of entries in memory (at least the
    /// newest entry, and every entry not released yet), and at most half of it of entries
    /// read back.
    pub fn new(budget: usize) -> Self {
        CachedLog {
            first: 1,
            compacted_term: 0,
            last: 0,
            runs: VecDeque::new(),
            tail: VecDeque::new(),
            tail_bytes: 0,
            window: VecDeque::new(),
            window_bytes: 0,
            configs: BTreeMap::new(),
            budget,
            released: 0,
            hard_state: HardState::default(),
            snapshot: None,
            chunk: Vec::new(),
        }
    }

    /// Appends an entry whose data stays in the durable store only (while a host fills the
    /// log from its store at a restart): its term is kept, its data is read back when
    /// needed. Only before any entry with data other than membership entries, and never
    /// for a membership entry (those are always kept: use [`LogStorage::append`], even
    /// between entries without data).
    pub fn append_without_data(
        &mut self,
        index: Index,
        term: Term,
        kind: EntryKind,
    ) -> Result<(), StorageError> {
        if index != self.last + 1 {
            return Err(StorageError::OutOfRange);
        }
        if pinned(kind) || self.tail.iter().any(|e| !pinned(e.kind)) {
            return Err(StorageError::OutOfRange);
        }
        // Membership entries appended while filling stay as configurations: the tail
        // holds the newest entries only.
        while let Some(e) = self.tail.pop_front() {
            self.tail_bytes -= cost(&e);
            self.configs.insert(e.index, e);
        }
        self.push_term(index, term);
        self.last = index;
        Ok(())
    }

    /// Bytes of entry data held in memory now (the tail, the window, the configurations).
    pub fn bytes_in_memory(&self) -> usize {
        self.tail_bytes + self.window_bytes + self.configs.values().map(cost).sum::<usize>()
    }

    /// First index whose data is in the tail.
    fn tail_from(&self) -> Index {
        self.last + 1 - self.tail.len() as u64
    }

    fn push_term(&mut self, index: Index, term: Term) {
        if self.runs.back().is_none_or(|&(_, t)| t != term) {
            self.runs.push_back((index, term));
        }
    }

    /// Drops tail data of released entries while the tail is over budget.
    fn evict(&mut self) {
        while self.tail_bytes > self.budget && self.tail.len() > 1 {
            let Some(front) = self.tail.front() else {
                break;
            };
            if front.index > self.released {
                break;
            }
            let Some(e) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= cost(&e);
            if pinned(e.kind) {
                self.configs.insert(e.index, e);
            }
        }
    }

    fn clear_window(&mut self) {
        self.window.clear();
        self.window_bytes = 0;
    }
}

impl LogStorage for CachedLog {
    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    fn first_index(&self) -> Index {
        self.first
    }

    fn last_index(&self) -> Index {
        self.last
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index + 1 == self.first {
            return Some(self.compacted_term);
        }
        if index < self.first || index > self.last {
            return None;
        }
        let run = self.runs.partition_point(|&(start, _)| start <= index);
        run.checked_sub(1).map(|r| self.runs[r].1)
    }

    fn entry(&self, index: Index) -> Option<Entry<'_>> {
        if index < self.first || index > self.last {
            return None;
        }
        let tail_from = self.tail_from();
        if index >= tail_from {
            return Some(self.tail[(index - tail_from) as usize].as_entry());
        }
        if let Some(w) = self.window.front() {
            if index >= w.index && index < w.index + self.window.len() as u64 {
                return Some(self.window[(index - w.index) as usize].as_entry());
            }
        }
        self.configs.get(&index).map(OwnedEntry::as_entry)
    }

    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        if entry.index != self.last + 1 {
            return Err(StorageError::OutOfRange);
        }
        let owned = OwnedEntry::from(*entry);
        self.tail_bytes += cost(&owned);
        self.tail.push_back(owned);
        self.push_term(entry.index, entry.term);
        self.last = entry.index;
        self.evict();
        Ok(())
    }

    fn truncate_suffix(&mut self, from: Index) {
        debug_assert!(from >= self.first, "truncation below the compaction point");
        if from > self.last {
            return;
        }
        while self.tail.back().is_some_and(|e| e.index >= from) {
            if let Some(e) = self.tail.pop_back() {
                self.tail_bytes -= cost(&e);
            }
        }
        while self.window.back().is_some_and(|e| e.index >= from) {
            if let Some(e) = self.window.pop_back() {
                self.window_bytes -= cost(&e);
            }
        }
        self.configs.retain(|&i, _| i < from);
        while self.runs.back().is_some_and(|&(start, _)| start >= from) {
            self.runs.pop_back();
        }
        self.last = from - 1;
    }

    fn compact(&mut self, through: Index) {
        if through < self.first {
            return;
        }
        let through = through.min(self.last);
        let Some(term) = self.term(through) else {
            return;
        };
        while self.tail.front().is_some_and(|e| e.index <= through) {
            if let Some(e) = self.tail.pop_front() {
                self.tail_bytes -= cost(&e);
            }
        }
        while self.window.front().is_some_and(|e| e.index <= through) {
            if let Some(e) = self.window.pop_front() {
                self.window_bytes -= cost(&e);
            }
        }
        self.configs.retain(|&i, _| i > through);
        // The run holding `through + 1` starts there now.
        let keep = self
            .runs
            .partition_point(|&(start, _)| start <= through + 1);
        let first_kept = keep.saturating_sub(1);
        self.runs.drain(..first_kept);
        if let Some(run) = self.runs.front_mut() {
            run.0 = run.0.max(through + 1);
        }
        if self.last == through {
            self.runs.clear();
        }
        self.first = through + 1;
        self.compacted_term = term;
    }

    fn reset(&mut self, index: Index, term: Term) {
        self.tail.clear();
        self.tail_bytes = 0;
        self.clear_window();
        self.configs.clear();
        self.runs.clear();
        self.first = index + 1;
        self.last = index;
        self.compacted_term = term;
    }

    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.snapshot
    }

    fn set_snapshot_meta(&mut self, meta: SnapshotMeta) {
        self.snapshot = Some(meta);
    }

    fn stage_snapshot_chunk(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.chunk.clear();
        self.chunk.extend_from_slice(data);
        Ok(())
    }

    fn staged_snapshot_chunk(&self) -> &[u8] {
        &self.chunk
    }

    fn clear_fetched(&mut self) {
        self.clear_window();
    }

    fn release(&mut self, index: Index) {
        self.released = self.released.max(index);
        self.evict();
    }

    fn insert_fetched(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        if entry.index < self.first
            || entry.index >= self.tail_from()
            || self.term(entry.index) != Some(entry.term)
        {
            return Err(StorageError::OutOfRange);
        }
        if self.entry(entry.index).is_some() {
            return Ok(());
        }
        let follows = self
            .window
            .back()
            .is_some_and(|w| w.index + 1 == entry.index);
        if !follows {
            self.clear_window();
        }
        // Room for half the budget, and always for one entry; never by dropping an entry
        // of the same fetch (the node needs them in order).
        let owned = OwnedEntry::from(*entry);
        let limit = (self.budget / 2).max(cost(&owned));
        if !self.window.is_empty() && self.window_bytes + cost(&owned) > limit {
            return Err(StorageError::Full);
        }
        self.window_bytes += cost(&owned);
        self.window.push_back(owned);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: Index, term: Term, kind: EntryKind) -> Entry<'static> {
        Entry {
            index,
            term,
            kind,
            data: &[7; 100],
        }
    }

    #[test]
    fn cached_log_follows_the_storage_contract() {
        super::super::conformance::check(|| CachedLog::new(1 << 20));
    }

    #[test]
    fn only_released_entries_leave_memory_and_configurations_never_do() {
        let budget = 4 * (100 + ENTRY_OVERHEAD);
        let mut log = CachedLog::new(budget);
        for i in 1..=10 {
            let kind = if i == 2 {
                EntryKind::Membership
            } else {
                EntryKind::Command
            };
            log.append(&e(i, 1 + i / 4, kind)).unwrap();
        }
        assert!(log.entry(1).is_some(), "nothing released yet");
        log.release(5);
        assert!(log.entry(1).is_none() && log.entry(5).is_none());
        assert!(log.entry(6).is_some(), "not released");
        assert_eq!(log.entry(2).map(|x| x.kind), Some(EntryKind::Membership));
        assert_eq!(
            (1..=10).map(|i| log.term(i).unwrap()).collect::<Vec<_>>(),
            alloc::vec![1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
        );
        log.release(10);
        assert!(log.bytes_in_memory() <= budget + 100 + ENTRY_OVERHEAD);
        assert!(log.entry(10).is_some(), "the newest entry stays");

        // Read back what was dropped: a window of consecutive entries, half the budget.
        log.clear_fetched();
        for i in 3..=4 {
            log.insert_fetched(&e(i, 1 + i / 4, EntryKind::Command))
                .unwrap();
        }
        assert_eq!(
            log.insert_fetched(&e(5, 2, EntryKind::Command)),
            Err(StorageError::Full),
            "the window holds two entries, and keeps the first ones of a fetch"
        );
        assert!(log.entry(3).is_some() && log.entry(4).is_some());
        assert_eq!(
            log.insert_fetched(&e(4, 2, EntryKind::Command)),
            Ok(()),
            "held already"
        );
        assert_eq!(
            log.insert_fetched(&e(1, 5, EntryKind::Command)),
            Err(StorageError::OutOfRange),
            "a term that is not the log's"
        );
        log.truncate_suffix(4);
        assert!(log.entry(4).is_none());
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(4), None);
        log.compact(2);
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.entry(2), None, "compacted, configuration included");
        assert_eq!(log.term(3), Some(1));
    }

    #[test]
    fn a_restart_can_fill_it_without_the_data() {
        let mut log = CachedLog::new(1000);
        for i in 1..=100 {
            log.append_without_data(i, 1 + i / 50, EntryKind::Command)
                .unwrap();
        }
        assert_eq!(
            log.append_without_data(101, 3, EntryKind::Membership),
            Err(StorageError::OutOfRange)
        );
        log.append(&e(101, 3, EntryKind::Membership)).unwrap();
        log.append(&e(102, 3, EntryKind::Command)).unwrap();
        assert_eq!(
            log.append_without_data(103, 3, EntryKind::Command),
            Err(StorageError::OutOfRange),
            "not after entries with data"
        );
        assert_eq!(log.term(49), Some(1));
        assert_eq!(log.term(50), Some(2));
        assert!(log.entry(50).is_none());
        assert!(log.entry(101).is_some());
        assert_eq!(log.bytes_in_memory(), 2 * (100 + ENTRY_OVERHEAD));
    }
}
