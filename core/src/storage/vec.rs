//! [`VecLog`]: a growable memory log that keeps everything (with `alloc`).

use super::{LogStorage, SnapshotMeta, StorageError};
use crate::types::{Entry, EntryKind, HardState, Index, Term};
use alloc::vec::Vec;

/// An entry that owns its data (with `alloc`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OwnedEntry {
    /// Position in the log.
    pub index: Index,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// What the entry carries.
    pub kind: EntryKind,
    /// The command bytes.
    pub data: Vec<u8>,
}

impl OwnedEntry {
    /// Borrows this entry.
    pub fn as_entry(&self) -> Entry<'_> {
        Entry {
            index: self.index,
            term: self.term,
            kind: self.kind,
            data: &self.data,
        }
    }
}

impl From<Entry<'_>> for OwnedEntry {
    fn from(e: Entry<'_>) -> Self {
        OwnedEntry {
            index: e.index,
            term: e.term,
            kind: e.kind,
            data: e.data.to_vec(),
        }
    }
}

/// A growable memory log that keeps every entry it is given (with `alloc`): what a test or
/// a host with a small log uses. It never drops data, so the node never fetches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VecLog {
    entries: Vec<OwnedEntry>,
    first: Index,
    compacted_term: Term,
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    chunk: Vec<u8>,
}

impl VecLog {
    /// An empty log.
    pub fn new() -> Self {
        VecLog {
            first: 1,
            ..VecLog::default()
        }
    }

    /// The entries kept, in order.
    pub fn entries(&self) -> &[OwnedEntry] {
        &self.entries
    }

    fn position(&self, index: Index) -> Option<usize> {
        let pos = usize::try_from(index.checked_sub(self.first)?).ok()?;
        (pos < self.entries.len()).then_some(pos)
    }
}

impl LogStorage for VecLog {
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
        self.first + self.entries.len() as u64 - 1
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index + 1 == self.first {
            return Some(self.compacted_term);
        }
        self.position(index).map(|p| self.entries[p].term)
    }

    fn entry(&self, index: Index) -> Option<Entry<'_>> {
        self.position(index).map(|p| self.entries[p].as_entry())
    }

    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        if entry.index != self.last_index() + 1 {
            return Err(StorageError::OutOfRange);
        }
        self.entries.push(OwnedEntry::from(*entry));
        Ok(())
    }

    fn truncate_suffix(&mut self, from: Index) {
        debug_assert!(from >= self.first, "truncation below the compaction point");
        self.entries
            .truncate(from.saturating_sub(self.first) as usize);
    }

    fn compact(&mut self, through: Index) {
        if through < self.first {
            return;
        }
        let through = through.min(self.last_index());
        let Some(term) = self.term(through) else {
            return;
        };
        self.entries.drain(..(through + 1 - self.first) as usize);
        self.first = through + 1;
        self.compacted_term = term;
    }

    fn reset(&mut self, index: Index, term: Term) {
        self.entries.clear();
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
        self.chunk.clear();
        self.chunk.extend_from_slice(data);
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

    #[test]
    fn vec_log_follows_the_storage_contract() {
        super::super::conformance::check(VecLog::new);
    }
}
