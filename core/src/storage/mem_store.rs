//! [`MemStore`]: a durable store that lives in memory (with `alloc`), the reference for the
//! host's side of the contract.

use super::{LogStorage, OwnedEntry, SnapshotMeta, StorageError};
use crate::durability::{Batch, SnapshotWrite};
use crate::types::{Entry, HardState, Index, Term};
use alloc::vec::Vec;

/// What a host's durable store holds, kept in memory: the hard state, the log (from a
/// compaction point), the kept snapshot's metadata and bytes, and a snapshot being
/// received. It performs [`Persist`](crate::Persist) batches exactly as the contract says, serves
/// [`Output::Fetch`](crate::Output::Fetch) and
/// [`Output::SendSnapshot`](crate::Output::SendSnapshot), and fills a memory log at a
/// restart ([`MemStore::recover`]).
///
/// Tests and examples use it as "the disk": a crash is dropping the node and keeping the
/// store, with whatever batches were performed. It is also the model a durable store of
/// your own is checked against: [`conformance::durable`](crate::conformance::durable)
/// performs the same batches on both, reopens yours, and compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStore {
    /// The term and vote.
    pub hard_state: HardState,
    /// The entries kept, in order.
    pub entries: Vec<OwnedEntry>,
    /// Index and term of the entry before the first kept.
    pub compacted: (Index, Term),
    /// The kept snapshot: its metadata and the state machine's bytes.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// A snapshot being received: its metadata and the bytes so far.
    pub incoming: Option<(SnapshotMeta, Vec<u8>)>,
    /// Snapshots the host took of its own state machine, by index, until one becomes the
    /// kept snapshot ([`SnapshotWrite::Taken`]).
    pub taken: Vec<(Index, Vec<u8>)>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        MemStore::default()
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> Index {
        self.compacted.0 + self.entries.len() as u64
    }

    fn position(&self, index: Index) -> Option<usize> {
        let pos = usize::try_from(index.checked_sub(self.compacted.0 + 1)?).ok()?;
        (pos < self.entries.len()).then_some(pos)
    }

    /// The entry at `index`, if kept.
    pub fn entry(&self, index: Index) -> Option<Entry<'_>> {
        self.position(index).map(|p| self.entries[p].as_entry())
    }

    /// Performs a batch, in the contract's order.
    pub fn persist(&mut self, batch: &Batch<'_>) {
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        if let Some(chunk) = batch.snapshot_chunk {
            if chunk.offset == 0 || self.incoming.as_ref().is_none_or(|(m, _)| m != chunk.meta) {
                self.incoming = Some((*chunk.meta, Vec::new()));
            }
            if let Some((_, bytes)) = &mut self.incoming {
                bytes.truncate(chunk.offset as usize);
                bytes.extend_from_slice(chunk.data);
            }
        }
        match batch.snapshot {
            Some(SnapshotWrite::Installed(meta)) => {
                let bytes = self.incoming.take().map(|(_, b)| b).unwrap_or_default();
                self.snapshot = Some((*meta, bytes));
            }
            Some(SnapshotWrite::Taken(meta)) => {
                let bytes = self
                    .taken
                    .iter()
                    .find(|(i, _)| *i == meta.index)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                self.taken.retain(|(i, _)| *i > meta.index);
                self.snapshot = Some((*meta, bytes));
            }
            None => {}
        }
        if let Some((index, term)) = batch.reset {
            self.entries.clear();
            self.compacted = (index, term);
        }
        if let Some(from) = batch.truncate_from {
            if let Some(pos) = self.position(from) {
                self.entries.truncate(pos);
            }
        }
        for entry in batch.entries.iter() {
            if entry.index == self.last_index() + 1 {
                self.entries.push(entry.into());
            } else if let Some(pos) = self.position(entry.index) {
                // Written again after a truncation in the same batch.
                self.entries.truncate(pos);
                self.entries.push(entry.into());
            }
        }
        if let Some(through) = batch.compact_through {
            if let Some(pos) = self.position(through) {
                let term = self.entries[pos].term;
                self.entries.drain(..=pos);
                self.compacted = (through, term);
            }
        }
    }

    /// Keeps the host's own snapshot of its state machine at `index` (the bytes), before
    /// [`Node::snapshot_taken`](crate::Node::snapshot_taken) makes it the kept one.
    pub fn save_taken(&mut self, index: Index, bytes: Vec<u8>) {
        self.taken.retain(|(i, _)| *i != index);
        self.taken.push((index, bytes));
    }

    /// The chunk of the kept snapshot that [`Output::SendSnapshot`](crate::Output::SendSnapshot)
    /// asks for: the bytes at `offset` (at most `max_len`) and whether they reach its end;
    /// `None` if the kept snapshot is not the one of `index`, or the offset is past its end.
    pub fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        max_len: usize,
    ) -> Option<(&[u8], bool)> {
        let (meta, bytes) = self.snapshot.as_ref()?;
        if meta.index != index {
            return None;
        }
        let start = usize::try_from(offset).ok()?;
        if start > bytes.len() || (start == bytes.len() && start > 0) {
            return None;
        }
        let end = start.saturating_add(max_len).min(bytes.len());
        Some((&bytes[start..end], end == bytes.len()))
    }

    /// The entries `from..=to` it holds, for [`Node::fetched`](crate::Node::fetched).
    pub fn fetch(&self, from: Index, to: Index) -> impl Iterator<Item = Entry<'_>> {
        (from..=to).map_while(move |i| self.entry(i))
    }

    /// Fills an empty memory log with what the store holds (a restart): hard state,
    /// snapshot metadata, compaction point and entries.
    pub fn recover<S: LogStorage>(&self, log: &mut S) -> Result<(), StorageError> {
        log.set_hard_state(self.hard_state);
        if let Some((meta, _)) = &self.snapshot {
            log.set_snapshot_meta(*meta);
        }
        if self.compacted.0 > 0 {
            log.reset(self.compacted.0, self.compacted.1);
        }
        for e in &self.entries {
            log.append(&e.as_entry())?;
        }
        Ok(())
    }
}
