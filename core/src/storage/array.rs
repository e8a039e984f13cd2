//! [`ArrayLog`]: a fixed-capacity memory log, no allocation ever.

use super::{LogStorage, SnapshotMeta, StorageError};
use crate::types::{Entry, EntryKind, HardState, Index, Term};

/// Slots only a no-op or a configuration may take (see [`ArrayLog`]).
const RESERVED: usize = 2;

#[derive(Clone, Debug, Default)]
struct Slot<const DATA: usize> {
    term: Term,
    kind: EntryKind,
    data: heapless::Vec<u8, DATA>,
}

/// A log of at most `CAP` entries of at most `DATA` bytes each, in a ring buffer, with room
/// for a received snapshot chunk of `CHUNK` bytes (0: this node cannot be sent snapshots):
/// no allocation, ever. Compacting the prefix frees slots for new entries. It never drops
/// an entry's data, so the node never has to fetch one. Its last two slots take no command
/// (a new leader's no-op and a configuration always fit), so `CAP` must be above 2.
///
/// A board fills it at boot from its flash journal, and writes the node's
/// [`Output::Persist`](crate::Output::Persist) batches to the journal; a test uses it as
/// the fastest possible storage.
///
/// ```
/// use coracle::{ArrayLog, Entry, EntryKind, LogStorage};
/// let mut log: ArrayLog<4, 8> = ArrayLog::new();
/// log.append(&Entry { index: 1, term: 1, kind: EntryKind::Command, data: b"x=1" }).unwrap();
/// assert_eq!(log.last_index(), 1);
/// assert_eq!(log.entry(1).unwrap().data, b"x=1");
/// ```
#[derive(Clone, Debug)]
pub struct ArrayLog<const CAP: usize, const DATA: usize, const CHUNK: usize = 0> {
    slots: [Slot<DATA>; CAP],
    /// Position in `slots` of the entry with index `first`.
    head: usize,
    len: usize,
    /// Index of the first entry kept.
    first: Index,
    /// Term of entry `first - 1`.
    compacted_term: Term,
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    chunk: heapless::Vec<u8, CHUNK>,
}

impl<const CAP: usize, const DATA: usize, const CHUNK: usize> Default
    for ArrayLog<CAP, DATA, CHUNK>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<const CAP: usize, const DATA: usize, const CHUNK: usize> ArrayLog<CAP, DATA, CHUNK> {
    /// An empty log.
    pub fn new() -> Self {
        ArrayLog {
            slots: core::array::from_fn(|_| Slot::default()),
            head: 0,
            len: 0,
            first: 1,
            compacted_term: 0,
            hard_state: HardState::default(),
            snapshot: None,
            chunk: heapless::Vec::new(),
        }
    }

    /// How many more entries fit.
    pub fn free(&self) -> usize {
        CAP - self.len
    }

    fn slot(&self, index: Index) -> Option<&Slot<DATA>> {
        if index < self.first || index >= self.first + self.len as u64 {
            return None;
        }
        let offset = (index - self.first) as usize;
        Some(&self.slots[(self.head + offset) % CAP])
    }
}

impl<const CAP: usize, const DATA: usize, const CHUNK: usize> LogStorage
    for ArrayLog<CAP, DATA, CHUNK>
{
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
        self.first + self.len as u64 - 1
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index + 1 == self.first {
            return Some(self.compacted_term);
        }
        self.slot(index).map(|s| s.term)
    }

    fn entry(&self, index: Index) -> Option<Entry<'_>> {
        self.slot(index).map(|s| Entry {
            index,
            term: s.term,
            kind: s.kind,
            data: &s.data,
        })
    }

    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        if entry.index != self.last_index() + 1 {
            return Err(StorageError::OutOfRange);
        }
        // The last slots are kept for what a cluster needs to make progress: a new
        // leader's no-op (which commits everything before it, so the log can be compacted)
        // and then a configuration. A log full of commands from an old leader must not
        // leave its node, once elected, unable to commit anything again.
        let reserved = match entry.kind {
            EntryKind::Command => RESERVED,
            EntryKind::Membership => 1,
            EntryKind::Noop => 0,
        };
        if self.len + reserved >= CAP {
            return Err(StorageError::Full);
        }
        let data =
            heapless::Vec::from_slice(entry.data).map_err(|_| StorageError::EntryTooLarge)?;
        let pos = (self.head + self.len) % CAP;
        self.slots[pos] = Slot {
            term: entry.term,
            kind: entry.kind,
            data,
        };
        self.len += 1;
        Ok(())
    }

    fn truncate_suffix(&mut self, from: Index) {
        debug_assert!(from >= self.first, "truncation below the compaction point");
        if from <= self.last_index() {
            self.len = from.saturating_sub(self.first) as usize;
        }
    }

    fn compact(&mut self, through: Index) {
        if through < self.first {
            return;
        }
        let through = through.min(self.last_index());
        let Some(term) = self.term(through) else {
            return;
        };
        let drop = (through + 1 - self.first) as usize;
        self.head = (self.head + drop) % CAP;
        self.len -= drop;
        self.first = through + 1;
        self.compacted_term = term;
    }

    fn reset(&mut self, index: Index, term: Term) {
        self.head = 0;
        self.len = 0;
        self.first = index + 1;
        self.compacted_term = term;
    }

    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.snapshot
    }

    fn set_snapshot_meta(&mut self, meta: SnapshotMeta) {
        self.snapshot = Some(meta);
    }

    fn stage_snapshot_chunk(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.chunk = heapless::Vec::from_slice(data).map_err(|_| StorageError::Full)?;
        Ok(())
    }

    fn staged_snapshot_chunk(&self) -> &[u8] {
        &self.chunk
    }
    /// Keeps everything: nothing to drop.
    fn release(&mut self, _index: Index) {}

    fn clear_fetched(&mut self) {}

    /// Never drops data, so never asked.
    fn insert_fetched(&mut self, _entry: &Entry<'_>) -> Result<(), StorageError> {
        Err(StorageError::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: Index, term: Term, data: &[u8]) -> Entry<'_> {
        Entry {
            index,
            term,
            kind: EntryKind::Command,
            data,
        }
    }

    #[test]
    fn array_log_follows_the_storage_contract() {
        super::super::conformance::check(ArrayLog::<6, 4, 4>::new);
    }

    /// Sim seed 872078466487: a follower whose fixed-capacity log filled with an old
    /// leader's commands was elected, had no room for its no-op, so nothing of its term
    /// ever committed, nothing was applied, and the log could never be compacted.
    #[test]
    fn the_last_slots_wait_for_a_no_op_and_a_configuration() {
        let mut log: ArrayLog<4, 2> = ArrayLog::new();
        log.append(&e(1, 1, b"x")).unwrap();
        log.append(&e(2, 1, b"x")).unwrap();
        assert_eq!(log.append(&e(3, 1, b"x")), Err(StorageError::Full));
        let config = Entry {
            kind: EntryKind::Membership,
            ..e(3, 1, b"c")
        };
        log.append(&config).unwrap();
        let noop = Entry {
            kind: EntryKind::Noop,
            ..e(4, 2, b"")
        };
        assert_eq!(
            log.append(&Entry {
                kind: EntryKind::Membership,
                ..noop
            }),
            Err(StorageError::Full),
            "one slot is a no-op's alone"
        );
        log.append(&noop).unwrap();
        assert_eq!(log.free(), 0);
    }

    #[test]
    fn array_log_is_a_ring_and_reports_full() {
        let mut log: ArrayLog<5, 2> = ArrayLog::new();
        for i in 1..=3 {
            log.append(&e(i, 1, b"x")).unwrap();
        }
        assert_eq!(log.append(&e(4, 1, b"x")), Err(StorageError::Full));
        assert_eq!(log.append(&e(4, 1, b"toolong")), Err(StorageError::Full));
        log.compact(2);
        log.append(&e(4, 2, b"y")).unwrap();
        log.append(&e(5, 2, b"w")).unwrap();
        assert_eq!(log.entry(5).unwrap().data, b"w");
        assert_eq!(log.entry(3).unwrap().term, 1);
        log.compact(3);
        assert_eq!(
            log.append(&e(6, 2, b"toolong")),
            Err(StorageError::EntryTooLarge)
        );
        assert_eq!(
            log.stage_snapshot_chunk(b"x"),
            Err(StorageError::Full),
            "no room for chunks by default"
        );
    }
}
