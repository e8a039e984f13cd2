//! Where the log and the hard state live: the [`LogStorage`] trait and two implementations,
//! [`ArrayLog`] (fixed capacity, no allocation) and [`VecLog`] (growable, with `alloc`).
//!
//! Writes through this trait need not be durable when they return. The node announces them
//! with [`Output::Sync`](crate::Output::Sync); the host makes them durable (one flush for
//! many writes) and reports it with [`Node::synced`](crate::Node::synced). Until then the
//! node neither acknowledges the entries nor lets a vote leave.

use crate::types::{Entry, EntryKind, HardState, Index, Term};
use core::fmt;

/// A storage operation that could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StorageError {
    /// No room for another entry: compact the log (snapshot) to make room.
    Full,
    /// The entry's data is larger than one slot of this storage can hold.
    EntryTooLarge,
    /// The index is below the first index still kept (compacted away).
    Compacted,
    /// The index is past the end of the log.
    OutOfRange,
    /// The storage failed (I/O error, device gone).
    Unavailable,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageError::Full => "log storage is full",
            StorageError::EntryTooLarge => "entry is larger than a storage slot",
            StorageError::Compacted => "index is compacted away",
            StorageError::OutOfRange => "index is past the end of the log",
            StorageError::Unavailable => "log storage is unavailable",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StorageError {}

/// The log and hard state of one node, as the core sees them.
///
/// Indexes are contiguous: entries `first_index()..=last_index()` are present. Index
/// `first_index() - 1` is the last compacted entry, whose term is still known (`term`), so
/// the AppendEntries consistency check works across the compaction point. An empty, never
/// compacted log has `first_index() == 1` and `last_index() == 0`.
pub trait LogStorage {
    /// The hard state last written.
    fn hard_state(&self) -> HardState;
    /// Replaces the hard state.
    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError>;
    /// Index of the first entry kept.
    fn first_index(&self) -> Index;
    /// Index of the last entry (`first_index() - 1` when no entry is kept).
    fn last_index(&self) -> Index;
    /// Term of the entry at `index`, for `first_index() - 1 ..= last_index()` (so `Some(0)`
    /// for index 0 of a log never compacted); `None` outside that range.
    fn term(&self, index: Index) -> Option<Term>;
    /// The entry at `index`, if kept.
    fn entry(&self, index: Index) -> Option<Entry<'_>>;
    /// Appends `entry` at `last_index() + 1` (`entry.index` must be that index).
    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError>;
    /// Removes the entries `from..=last_index()` (a conflicting suffix, §5.3).
    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError>;
    /// Drops the entries `first_index()..=through`, remembering the term of `through`.
    fn compact(&mut self, through: Index) -> Result<(), StorageError>;

    /// The metadata of the snapshot kept, if this storage keeps snapshots. The default keeps
    /// none: a leader then cannot bring back a follower that needs compacted entries.
    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        None
    }

    /// Up to `max` bytes of the kept snapshot from `offset` (empty past its end).
    fn snapshot_chunk(&self, offset: u64, max: usize) -> Result<&[u8], StorageError> {
        let _ = (offset, max);
        Err(StorageError::Unavailable)
    }

    /// Stores a chunk of a snapshot being received. `offset` 0 starts a new one.
    fn receive_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let _ = (meta, offset, data);
        Err(StorageError::Unavailable)
    }

    /// The snapshot being received is complete: it becomes the kept snapshot and the log
    /// restarts after it (entries after `meta.index` are kept if the log holds `meta.index`
    /// with `meta.term`, otherwise all entries go).
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let _ = meta;
        Err(StorageError::Unavailable)
    }
}

/// The most members a snapshot's configuration holds.
pub const MAX_MEMBERS: usize = 32;

/// What a snapshot stands for: the state machine after applying every entry through
/// `index` (of `term`), `size` bytes long, and the configuration in force at `index`
/// (thesis 5.1: the snapshot carries the latest configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last index the snapshot covers (`lastIncludedIndex`).
    pub index: Index,
    /// Term of that entry (`lastIncludedTerm`).
    pub term: Term,
    /// Length of the snapshot in bytes.
    pub size: u64,
    config_len: u16,
    config: [u8; MAX_MEMBERS * 9],
}

impl SnapshotMeta {
    /// Metadata with the encoded configuration `config` (as in a membership entry); `None`
    /// if it is larger than [`MAX_MEMBERS`] members.
    pub fn new(index: Index, term: Term, size: u64, config: &[u8]) -> Option<Self> {
        let mut buf = [0u8; MAX_MEMBERS * 9];
        buf.get_mut(..config.len())?.copy_from_slice(config);
        Some(SnapshotMeta {
            index,
            term,
            size,
            config_len: config.len() as u16,
            config: buf,
        })
    }

    /// The encoded configuration (empty: the bootstrap members).
    pub fn config(&self) -> &[u8] {
        &self.config[..self.config_len as usize]
    }
}

#[derive(Clone, Debug, Default)]
struct Slot<const DATA: usize> {
    term: Term,
    kind: EntryKind,
    data: heapless::Vec<u8, DATA>,
}

/// A log of at most `CAP` entries of at most `DATA` bytes each, in a ring buffer: no
/// allocation, ever. Compacting the prefix frees slots for new entries.
///
/// It keeps nothing across a power cycle: a board pairs it with its own flash writes, and a
/// test uses it as the fastest possible storage.
///
/// ```
/// use coracle::{ArrayLog, Entry, EntryKind, LogStorage};
/// let mut log: ArrayLog<4, 8> = ArrayLog::new();
/// log.append(&Entry { index: 1, term: 1, kind: EntryKind::Command, data: b"x=1" }).unwrap();
/// assert_eq!(log.last_index(), 1);
/// assert_eq!(log.entry(1).unwrap().data, b"x=1");
/// ```
#[derive(Clone, Debug)]
pub struct ArrayLog<const CAP: usize, const DATA: usize> {
    slots: [Slot<DATA>; CAP],
    /// Position in `slots` of the entry with index `first`.
    head: usize,
    len: usize,
    /// Index of the first entry kept.
    first: Index,
    /// Term of entry `first - 1`.
    compacted_term: Term,
    hard_state: HardState,
}

impl<const CAP: usize, const DATA: usize> Default for ArrayLog<CAP, DATA> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const CAP: usize, const DATA: usize> ArrayLog<CAP, DATA> {
    /// An empty log.
    pub fn new() -> Self {
        ArrayLog {
            slots: core::array::from_fn(|_| Slot::default()),
            head: 0,
            len: 0,
            first: 1,
            compacted_term: 0,
            hard_state: HardState::default(),
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

impl<const CAP: usize, const DATA: usize> LogStorage for ArrayLog<CAP, DATA> {
    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.hard_state = hard_state;
        Ok(())
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
        if self.len == CAP {
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

    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        if from < self.first {
            return Err(StorageError::Compacted);
        }
        if from <= self.last_index() {
            self.len = (from - self.first) as usize;
        }
        Ok(())
    }

    fn compact(&mut self, through: Index) -> Result<(), StorageError> {
        if through < self.first {
            return Ok(());
        }
        let term = self.term(through).ok_or(StorageError::OutOfRange)?;
        let drop = (through + 1 - self.first) as usize;
        self.head = (self.head + drop) % CAP;
        self.len -= drop;
        self.first = through + 1;
        self.compacted_term = term;
        Ok(())
    }
}

#[cfg(feature = "alloc")]
pub use vec_log::{IncomingSnapshot, OwnedEntry, VecLog};

/// The chunk of a snapshot's bytes `data` at `offset`, at most `max` bytes (empty past the
/// end): [`LogStorage::snapshot_chunk`] for a log that keeps its snapshot in memory.
pub fn snapshot_chunk_of(data: &[u8], offset: u64, max: usize) -> &[u8] {
    let start = usize::try_from(offset).map_or(data.len(), |o| o.min(data.len()));
    let end = start.saturating_add(max).min(data.len());
    &data[start..end]
}

#[cfg(feature = "alloc")]
mod vec_log {
    use super::*;
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

    /// A growable in-memory log (with `alloc`): what a host with a heap uses in tests, or
    /// as the in-memory half of its own durable log.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct VecLog {
        entries: Vec<OwnedEntry>,
        first: Index,
        compacted_term: Term,
        hard_state: HardState,
        snapshot: Option<(SnapshotMeta, Vec<u8>)>,
        incoming: IncomingSnapshot,
    }

    /// A snapshot being received from a leader, in memory: the rules of
    /// [`LogStorage::receive_snapshot_chunk`] and [`LogStorage::install_snapshot`] for a log
    /// that keeps its snapshot in memory ([`VecLog`], or one of your own).
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct IncomingSnapshot(Option<(SnapshotMeta, Vec<u8>)>);

    impl IncomingSnapshot {
        /// Takes the chunk of snapshot `meta` at `offset`: offset 0 starts it over (a new
        /// snapshot, or the same one resent); any other chunk must continue the same
        /// snapshot exactly where the bytes received so far end.
        pub fn receive(
            &mut self,
            meta: &SnapshotMeta,
            offset: u64,
            data: &[u8],
        ) -> Result<(), StorageError> {
            if offset == 0 {
                self.0 = Some((*meta, Vec::new()));
            }
            match &mut self.0 {
                Some((m, buf)) if m == meta && buf.len() as u64 == offset => {
                    buf.extend_from_slice(data);
                    Ok(())
                }
                _ => Err(StorageError::OutOfRange),
            }
        }

        /// The bytes of snapshot `meta` if they all arrived (they are taken); otherwise
        /// nothing changes and the answer is [`StorageError::OutOfRange`].
        pub fn take_complete(&mut self, meta: &SnapshotMeta) -> Result<Vec<u8>, StorageError> {
            match self.0.take() {
                Some((m, data)) if &m == meta && data.len() as u64 == meta.size => Ok(data),
                other => {
                    self.0 = other;
                    Err(StorageError::OutOfRange)
                }
            }
        }
    }

    impl VecLog {
        /// An empty log.
        pub fn new() -> Self {
            VecLog {
                entries: Vec::new(),
                first: 1,
                compacted_term: 0,
                hard_state: HardState::default(),
                snapshot: None,
                incoming: IncomingSnapshot::default(),
            }
        }

        /// The entries kept, in order.
        pub fn entries(&self) -> &[OwnedEntry] {
            &self.entries
        }

        /// Keeps `data` as the snapshot described by `meta` (taken by the host at an applied
        /// index); compact the log through `meta.index` afterwards with
        /// [`Node::compact`](crate::Node::compact).
        pub fn save_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>) {
            self.snapshot = Some((meta, data));
        }

        /// The snapshot kept, with its bytes.
        pub fn snapshot(&self) -> Option<(&SnapshotMeta, &[u8])> {
            self.snapshot.as_ref().map(|(m, d)| (m, d.as_slice()))
        }

        fn position(&self, index: Index) -> Option<usize> {
            if index < self.first {
                return None;
            }
            let pos = (index - self.first) as usize;
            (pos < self.entries.len()).then_some(pos)
        }
    }

    impl LogStorage for VecLog {
        fn hard_state(&self) -> HardState {
            self.hard_state
        }

        fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
            self.hard_state = hard_state;
            Ok(())
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

        fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
            if from < self.first {
                return Err(StorageError::Compacted);
            }
            self.entries.truncate((from - self.first) as usize);
            Ok(())
        }

        fn compact(&mut self, through: Index) -> Result<(), StorageError> {
            if through < self.first {
                return Ok(());
            }
            let term = self.term(through).ok_or(StorageError::OutOfRange)?;
            self.entries.drain(..(through + 1 - self.first) as usize);
            self.first = through + 1;
            self.compacted_term = term;
            Ok(())
        }

        fn snapshot_meta(&self) -> Option<SnapshotMeta> {
            self.snapshot.as_ref().map(|(m, _)| *m)
        }

        fn snapshot_chunk(&self, offset: u64, max: usize) -> Result<&[u8], StorageError> {
            let (_, data) = self.snapshot.as_ref().ok_or(StorageError::Unavailable)?;
            Ok(snapshot_chunk_of(data, offset, max))
        }

        fn receive_snapshot_chunk(
            &mut self,
            meta: &SnapshotMeta,
            offset: u64,
            data: &[u8],
        ) -> Result<(), StorageError> {
            self.incoming.receive(meta, offset, data)
        }

        fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
            let data = self.incoming.take_complete(meta)?;
            if self.term(meta.index) == Some(meta.term) {
                self.compact(meta.index)?;
            } else {
                self.entries.clear();
                self.first = meta.index + 1;
                self.compacted_term = meta.term;
            }
            self.snapshot = Some((*meta, data));
            Ok(())
        }
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

    fn exercise<S: LogStorage>(log: &mut S) {
        assert_eq!((log.first_index(), log.last_index()), (1, 0));
        assert_eq!(log.term(0), Some(0));
        assert_eq!(log.term(1), None);
        for i in 1..=4 {
            log.append(&e(i, i, b"abc")).unwrap();
        }
        assert_eq!(log.append(&e(9, 1, b"")), Err(StorageError::OutOfRange));
        assert_eq!(log.term(4), Some(4));
        log.truncate_suffix(3).unwrap();
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.entry(3), None);
        log.compact(1).unwrap();
        assert_eq!(log.first_index(), 2);
        assert_eq!(log.term(1), Some(1));
        assert_eq!(log.term(0), None, "compacted away");
        assert_eq!(log.entry(1), None);
        assert_eq!(log.truncate_suffix(1), Err(StorageError::Compacted));
        log.append(&e(3, 5, b"z")).unwrap();
        assert_eq!(log.entry(3).unwrap().data, b"z");
        log.compact(3).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (4, 3));
        assert_eq!(log.term(3), Some(5));
    }

    #[test]
    fn array_log_follows_the_storage_contract() {
        exercise(&mut ArrayLog::<4, 4>::new());
    }

    #[test]
    fn snapshot_chunks_are_cut_within_the_bytes() {
        let data = b"0123456789";
        assert_eq!(snapshot_chunk_of(data, 0, 4), b"0123");
        assert_eq!(snapshot_chunk_of(data, 8, 4), b"89");
        assert_eq!(snapshot_chunk_of(data, 10, 4), b"");
        assert_eq!(snapshot_chunk_of(data, u64::MAX, usize::MAX), b"");
        assert_eq!(snapshot_chunk_of(data, 3, usize::MAX), b"3456789");
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn vec_log_follows_the_storage_contract() {
        exercise(&mut VecLog::new());
    }

    #[test]
    fn array_log_is_a_ring_and_reports_full() {
        let mut log: ArrayLog<3, 2> = ArrayLog::new();
        for i in 1..=3 {
            log.append(&e(i, 1, b"x")).unwrap();
        }
        assert_eq!(log.append(&e(4, 1, b"x")), Err(StorageError::Full));
        assert_eq!(log.append(&e(4, 1, b"toolong")), Err(StorageError::Full));
        log.compact(2).unwrap();
        log.append(&e(4, 2, b"y")).unwrap();
        log.append(&e(5, 2, b"w")).unwrap();
        assert_eq!(log.entry(5).unwrap().data, b"w");
        assert_eq!(log.entry(3).unwrap().term, 1);
        log.compact(3).unwrap();
        assert_eq!(
            log.append(&e(6, 2, b"toolong")),
            Err(StorageError::EntryTooLarge)
        );
    }
}
