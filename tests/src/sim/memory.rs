//! The node's memory log: one of the core's own [`LogStorage`] implementations, chosen per
//! host from the seed, so every run mixes the three shapes a real host uses.
//!
//! - [`VecLog`]: growable, keeps everything (a test host, a small server);
//! - [`CachedLog`] with a small byte budget: the data of applied entries leaves memory,
//!   so the node really asks its host for older entries ([`coracle::Output::Fetch`]) when
//!   it catches a follower up or applies after a restart (a server whose log lives on
//!   disk);
//! - [`ArrayLog`]: fixed capacity, no allocation (a board): when it fills up, the node asks
//!   its host for a snapshot ([`coracle::Output::SnapshotNeeded`]); its last slots wait
//!   for a new leader's no-op and a configuration.
//!
//! The memory log never holds the durable state: that is the host's [`Disk`](super::Disk),
//! which changes only when the host performs the node's [`coracle::Persist`] batches.

use crate::sim::disk::LogImage;
use coracle::{
    ArrayLog, CachedLog, Entry, EntryKind, HardState, Index, LogStorage, SnapshotMeta,
    StorageError, Term, VecLog,
};
use std::fmt;

/// Entries an [`ArrayLog`] host holds.
pub const ARRAY_ENTRIES: usize = 128;
/// Bytes of one entry of an [`ArrayLog`] host: a client command (at most
/// [`MAX_COMMAND_LEN`](super::kv::MAX_COMMAND_LEN) bytes) or a configuration of 9 members.
pub const ARRAY_ENTRY_BYTES: usize = 96;
/// The largest snapshot chunk an [`ArrayLog`] host can stage: such a host is used only when
/// the nodes send chunks no larger (`Config::max_snapshot_chunk_bytes`).
pub const ARRAY_CHUNK_BYTES: usize = 4096;

/// The fixed-capacity memory log of a board-like host.
pub type BoardLog = ArrayLog<ARRAY_ENTRIES, ARRAY_ENTRY_BYTES, ARRAY_CHUNK_BYTES>;

/// Which memory log a host gives its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// [`VecLog`].
    Vec,
    /// [`CachedLog`] with this byte budget.
    Cached(usize),
    /// [`BoardLog`].
    Array,
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryKind::Vec => f.write_str("VecLog"),
            MemoryKind::Cached(budget) => write!(f, "CachedLog({budget} B)"),
            MemoryKind::Array => write!(
                f,
                "ArrayLog<{ARRAY_ENTRIES}, {ARRAY_ENTRY_BYTES}, {ARRAY_CHUNK_BYTES}>"
            ),
        }
    }
}

/// The node's memory log, of the kind its host chose. Every method delegates to the
/// core's implementation.
#[derive(Clone, Debug)]
pub enum MemoryLog {
    /// A [`VecLog`].
    Vec(VecLog),
    /// A [`CachedLog`].
    Cached(CachedLog),
    /// A [`BoardLog`] (boxed: it is large).
    Array(Box<BoardLog>),
}

impl MemoryLog {
    /// An empty memory log of `kind`.
    pub fn new(kind: MemoryKind) -> Self {
        match kind {
            MemoryKind::Vec => MemoryLog::Vec(VecLog::new()),
            MemoryKind::Cached(budget) => MemoryLog::Cached(CachedLog::new(budget)),
            MemoryKind::Array => MemoryLog::Array(Box::default()),
        }
    }

    /// A memory log of `kind` filled from a durable image (a restart): hard state, kept
    /// snapshot, compaction point and entries. A [`CachedLog`] gets the data of its newest
    /// entries only (about half its budget, and every entry from the first configuration
    /// on, which it must hold); the node fetches the others when it needs them.
    pub fn recover(kind: MemoryKind, image: &LogImage) -> Result<Self, StorageError> {
        let mut log = MemoryLog::new(kind);
        log.set_hard_state(image.hard_state());
        if let Some((meta, _)) = image.snapshot() {
            log.set_snapshot_meta(*meta);
        }
        let first = image.first_index();
        if first > 1 {
            let term = image.id(first - 1).map_or(0, |id| id.term);
            log.reset(first - 1, term);
        }
        let last = image.last_index();
        let mut with_data = first;
        if let (MemoryLog::Cached(cached), MemoryKind::Cached(budget)) = (&mut log, kind) {
            // From the newest entry back, as many as half the budget holds...
            let mut bytes = 0;
            let mut from = last + 1;
            while from > first {
                let size = image.entry(from - 1).map_or(0, |e| e.data.len())
                    + std::mem::size_of::<coracle::OwnedEntry>();
                if bytes + size > budget / 2 {
                    break;
                }
                bytes += size;
                from -= 1;
            }
            // ...but never after a configuration, which a cached log keeps in memory.
            let config = (first..from).find(|&i| {
                image
                    .entry(i)
                    .is_some_and(|e| e.kind == EntryKind::Membership)
            });
            with_data = config.unwrap_or(from);
            for index in first..with_data {
                let e = image.entry(index).ok_or(StorageError::OutOfRange)?;
                cached.append_without_data(index, e.term, e.kind)?;
            }
        }
        for index in with_data..=last {
            let e = image.entry(index).ok_or(StorageError::OutOfRange)?;
            log.append(&e)?;
        }
        Ok(log)
    }

    fn inner(&self) -> &dyn LogStorage {
        match self {
            MemoryLog::Vec(l) => l,
            MemoryLog::Cached(l) => l,
            MemoryLog::Array(l) => &**l,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn LogStorage {
        match self {
            MemoryLog::Vec(l) => l,
            MemoryLog::Cached(l) => l,
            MemoryLog::Array(l) => &mut **l,
        }
    }
}

impl LogStorage for MemoryLog {
    fn hard_state(&self) -> HardState {
        self.inner().hard_state()
    }
    fn set_hard_state(&mut self, hard_state: HardState) {
        self.inner_mut().set_hard_state(hard_state)
    }
    fn first_index(&self) -> Index {
        self.inner().first_index()
    }
    fn last_index(&self) -> Index {
        self.inner().last_index()
    }
    fn term(&self, index: Index) -> Option<Term> {
        self.inner().term(index)
    }
    fn entry(&self, index: Index) -> Option<Entry<'_>> {
        self.inner().entry(index)
    }
    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        self.inner_mut().append(entry)
    }
    fn truncate_suffix(&mut self, from: Index) {
        self.inner_mut().truncate_suffix(from)
    }
    fn compact(&mut self, through: Index) {
        self.inner_mut().compact(through)
    }
    fn reset(&mut self, index: Index, term: Term) {
        self.inner_mut().reset(index, term)
    }
    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.inner().snapshot_meta()
    }
    fn set_snapshot_meta(&mut self, meta: SnapshotMeta) {
        self.inner_mut().set_snapshot_meta(meta)
    }
    fn stage_snapshot_chunk(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.inner_mut().stage_snapshot_chunk(data)
    }
    fn staged_snapshot_chunk(&self) -> &[u8] {
        self.inner().staged_snapshot_chunk()
    }
    fn release(&mut self, index: Index) {
        self.inner_mut().release(index)
    }
    fn clear_fetched(&mut self) {
        self.inner_mut().clear_fetched()
    }
    fn insert_fetched(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        self.inner_mut().insert_fetched(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_follows_the_storage_contract() {
        for kind in [
            MemoryKind::Vec,
            MemoryKind::Cached(1 << 16),
            MemoryKind::Array,
        ] {
            coracle::conformance::check(|| MemoryLog::new(kind));
        }
    }
}
