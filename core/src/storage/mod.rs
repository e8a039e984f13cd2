//! The node's memory of its log: the [`LogStorage`] trait and its implementations,
//! [`ArrayLog`] (fixed capacity, no allocation: boards), [`VecLog`] (growable, with
//! `alloc`: tests) and [`CachedLog`] (bounded by a byte budget, with `alloc`: servers whose
//! log lives on disk).
//!
//! # Memory here, durability in the host
//!
//! A [`LogStorage`] is memory only: no method may block or do I/O. The node writes it as it
//! goes (entries, truncations, compaction, the hard state, the kept snapshot's metadata, a
//! chunk of a snapshot being received) and reads it (terms, and the entries it sends and
//! applies). Whatever must reach a disk or a flash chip leaves the node as an
//! [`Output::Persist`](crate::Output::Persist) batch that the host performs on its own
//! durable store when it chooses, then acknowledges with
//! [`Node::persisted`](crate::Node::persisted). The durable store (a file log, a flash
//! journal) is the host's and the node never sees it; after a restart the host fills a
//! memory log from it and hands it to [`Node::new`](crate::Node::new).
//!
//! # Reads that miss memory
//!
//! Terms are always in memory. Entry data need not be: [`LogStorage::entry`] may answer
//! `None` for an index between [`LogStorage::first_index`] and
//! [`LogStorage::last_index`], and the node then asks the host for it with
//! [`Output::Fetch`](crate::Output::Fetch) and goes on with what it has; the host reads the
//! entries back from its store and hands them in with
//! [`Node::fetched`](crate::Node::fetched). A memory log may drop the data of entries that
//! are durable and applied ([`LogStorage::release`]) but never of others, and always keeps
//! the membership entries after its compaction point. [`ArrayLog`] and [`VecLog`] keep
//! everything and never miss.

use crate::types::{Entry, EntryKind, HardState, Index, Term};
use core::fmt;

mod array;
#[cfg(feature = "alloc")]
mod cached;
#[cfg(feature = "alloc")]
mod mem_store;
#[cfg(feature = "alloc")]
mod vec;

pub use array::ArrayLog;
#[cfg(feature = "alloc")]
pub use cached::CachedLog;
#[cfg(feature = "alloc")]
pub use mem_store::MemStore;
#[cfg(feature = "alloc")]
pub use vec::{OwnedEntry, VecLog};

/// A memory log operation that could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StorageError {
    /// No room for another entry (or chunk): compact the log (snapshot) to make room.
    Full,
    /// The entry's data is larger than one slot of this storage can hold.
    EntryTooLarge,
    /// The index is below the first index still kept (compacted away).
    Compacted,
    /// The index is not where the operation needs it (not the next entry, past the end).
    OutOfRange,
    /// The host's durable store failed (reported with
    /// [`Node::persist_failed`](crate::Node::persist_failed)).
    Unavailable,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageError::Full => "log storage is full",
            StorageError::EntryTooLarge => "entry is larger than a storage slot",
            StorageError::Compacted => "index is compacted away",
            StorageError::OutOfRange => "index is out of range",
            StorageError::Unavailable => "the durable store failed",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StorageError {}

/// The node's memory of its log, hard state and kept snapshot. Memory only: the durable
/// copy is the host's, written when the node asks ([`Output::Persist`](crate::Output::Persist)).
///
/// Indexes are contiguous: entries `first_index()..=last_index()` exist (their data in
/// memory or not). Index `first_index() - 1` is the last compacted entry, whose term is
/// still known, so the AppendEntries consistency check works across the compaction point.
/// An empty, never compacted log has `first_index() == 1` and `last_index() == 0`.
///
/// The node calls the mutators only with valid arguments (the next index to append, a
/// truncation point inside the log, a compaction point it holds a snapshot of).
pub trait LogStorage {
    /// The hard state (recovered, then as the node set it).
    fn hard_state(&self) -> HardState;
    /// Replaces the hard state.
    fn set_hard_state(&mut self, hard_state: HardState);
    /// Index of the first entry kept.
    fn first_index(&self) -> Index;
    /// Index of the last entry (`first_index() - 1` when no entry is kept).
    fn last_index(&self) -> Index;
    /// Term of the entry at `index`, for `first_index() - 1 ..= last_index()` (so `Some(0)`
    /// for index 0 of a log never compacted); `None` outside that range. Always in memory.
    fn term(&self, index: Index) -> Option<Term>;
    /// The entry at `index` if its data is in memory; `None` outside the log or when only
    /// the durable store holds it (the node fetches it).
    fn entry(&self, index: Index) -> Option<Entry<'_>>;
    /// Appends `entry` at `last_index() + 1` (`entry.index` must be that index). `Full`
    /// refuses it (back-pressure: the node asks for a snapshot and compaction).
    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError>;
    /// Removes the entries `from..=last_index()` (a conflicting suffix, §5.3);
    /// `from >= first_index()`.
    fn truncate_suffix(&mut self, from: Index);
    /// Drops the entries `first_index()..=through`, remembering the term of `through`
    /// (`through` is at most `last_index()`).
    fn compact(&mut self, through: Index);
    /// Drops every entry: the log continues after `index`, whose term is `term` (a
    /// snapshot was installed that the log does not reach).
    fn reset(&mut self, index: Index, term: Term);
    /// The metadata of the kept snapshot.
    fn snapshot_meta(&self) -> Option<SnapshotMeta>;
    /// Records the metadata of the kept snapshot.
    fn set_snapshot_meta(&mut self, meta: SnapshotMeta);
    /// Holds a copy of a chunk of a snapshot being received until the host has written it
    /// out (it replaces the chunk held before). `Full` if it does not fit: the node then
    /// asks the leader to send it again later.
    fn stage_snapshot_chunk(&mut self, data: &[u8]) -> Result<(), StorageError>;
    /// The chunk held by [`LogStorage::stage_snapshot_chunk`].
    fn staged_snapshot_chunk(&self) -> &[u8];
    /// Entries through `index` are durable and applied: a bounded memory log may drop
    /// their data (not membership entries); one that keeps everything does nothing.
    fn release(&mut self, index: Index);
    /// The host is handing in what a fetch read back: what earlier fetches read is not
    /// needed any more.
    fn clear_fetched(&mut self);
    /// An entry the host read back from its durable store, asked for with
    /// [`Output::Fetch`](crate::Output::Fetch): keep it in memory if there is room (`Full`
    /// otherwise: never by dropping an entry of the same fetch). A log that never drops
    /// data is never asked, and may refuse.
    ///
    /// These three have no default on purpose: a log that wraps another and forgot to pass
    /// one on would break reads back without a word.
    fn insert_fetched(&mut self, entry: &Entry<'_>) -> Result<(), StorageError>;
}

/// The most members a snapshot's configuration holds.
pub const MAX_MEMBERS: usize = 32;

/// What a snapshot stands for: the state machine after applying every entry through
/// `index` (of `term`), and the configuration in force at `index` (thesis 5.1: the
/// snapshot carries the latest configuration). Its size is not part of it: a snapshot is
/// streamed, and its last chunk says it is the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last index the snapshot covers (`lastIncludedIndex`).
    pub index: Index,
    /// Term of that entry (`lastIncludedTerm`).
    pub term: Term,
    config_len: u16,
    config: [u8; MAX_MEMBERS * 9],
}

impl SnapshotMeta {
    /// No snapshot: index and term 0, no configuration.
    pub const EMPTY: SnapshotMeta = SnapshotMeta {
        index: 0,
        term: 0,
        config_len: 0,
        config: [0; MAX_MEMBERS * 9],
    };

    /// Metadata with the encoded configuration `config` (as in a membership entry); `None`
    /// if it is larger than [`MAX_MEMBERS`] members.
    pub fn new(index: Index, term: Term, config: &[u8]) -> Option<Self> {
        let mut buf = [0u8; MAX_MEMBERS * 9];
        buf.get_mut(..config.len())?.copy_from_slice(config);
        Some(SnapshotMeta {
            index,
            term,
            config_len: config.len() as u16,
            config: buf,
        })
    }

    /// The encoded configuration (empty: the bootstrap members).
    pub fn config(&self) -> &[u8] {
        &self.config[..self.config_len as usize]
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for SnapshotMeta {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "SnapshotMeta {{ index: {}, term: {} }}",
            self.index,
            self.term
        )
    }
}

pub mod conformance;
