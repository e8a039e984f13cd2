//! The simulator's log storage: a durable image and a volatile tail of writes.
//!
//! Every write the core makes through [`LogStorage`] is applied at once to the *live* view
//! (what the node reads back) and queued as not yet durable. The host answers
//! [`Output::Sync`](coracle::Output::Sync) after a simulated fsync delay by calling
//! [`SimLog::flush_through`] with the write counter it noted when the sync was asked for,
//! which applies the queued writes, in order, to the *durable image*. A crash keeps only
//! the durable image (optionally plus a prefix of the unsynced writes, as a disk that got
//! some of them out before the power went: [`SimLog::crash`]).
//!
//! Each entry also carries a *chain hash*: a hash of its own index, term, kind and data
//! and of the chain hash of the entry before it. Two logs hold the same prefix through
//! index `i` exactly when their chain hashes at `i` are equal (up to hash collisions),
//! which lets the oracles check Log Matching and compare committed prefixes in O(1).
//!
//! Snapshots follow the same rules. The host's own snapshot ([`SimLog::save_snapshot`]),
//! a compaction, and a snapshot installed from the leader
//! ([`LogStorage::install_snapshot`]) are writes like the others: durable with the sync
//! that follows them, lost in a crash before it. Chunks being received are volatile. A
//! snapshot's bytes start with the chain hash of its last included entry (see
//! [`crate::sim::kv`]), so the chain of hashes goes on across an installed snapshot.

use crate::oracle::{EntryId, LogView};
use crate::sim::rng::mix64;
use coracle::{
    snapshot_chunk_of, Entry, EntryKind, HardState, IncomingSnapshot, Index, LogStorage,
    SnapshotMeta, StorageError, Term,
};
use std::collections::VecDeque;
use std::rc::Rc;

/// One stored entry.
#[derive(Clone, Debug)]
struct Stored {
    term: Term,
    kind: EntryKind,
    data: Rc<[u8]>,
    chain: u64,
}

/// A write to the log storage, as queued until it is durable.
#[derive(Clone, Debug)]
enum Write {
    HardState(HardState),
    Append(Stored),
    Truncate(Index),
    Compact(Index),
    /// The host's snapshot of its state machine (kept, not yet compacted).
    SaveSnapshot(SnapshotMeta, Rc<[u8]>),
    /// A snapshot received from the leader, installed: the log restarts after it.
    Install(SnapshotMeta, Rc<[u8]>, u64),
}

/// The content of a log: entries, compaction point and hard state. Both the live view and
/// the durable image of a [`SimLog`] are one of these; it is also what survives a crash.
#[derive(Clone, Debug)]
pub struct LogImage {
    entries: Vec<Stored>,
    /// Index of `entries[0]`.
    first: Index,
    compacted_term: Term,
    compacted_chain: u64,
    hard_state: HardState,
    snapshot: Option<(SnapshotMeta, Rc<[u8]>)>,
    /// Indexes of the membership entries appended (newest last; compacted ones stay).
    configs: Vec<Index>,
}

impl Default for LogImage {
    fn default() -> Self {
        LogImage {
            entries: Vec::new(),
            first: 1,
            compacted_term: 0,
            compacted_chain: 0,
            hard_state: HardState::default(),
            snapshot: None,
            configs: Vec::new(),
        }
    }
}

impl LogImage {
    /// An empty log with the default hard state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> Index {
        self.first + self.entries.len() as u64 - 1
    }

    /// The hard state of this image.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The index of the first entry kept (one past the compaction point).
    pub fn first_index(&self) -> Index {
        self.first
    }

    /// The snapshot kept, with its bytes.
    pub fn snapshot(&self) -> Option<(&SnapshotMeta, &[u8])> {
        self.snapshot.as_ref().map(|(m, d)| (m, &d[..]))
    }

    /// The index of the newest membership entry appended (a compacted one included; 0 if
    /// none). A configuration taken from an installed snapshot counts at the snapshot's
    /// index.
    pub fn config_index(&self) -> Index {
        self.configs.last().copied().unwrap_or(0)
    }

    fn get(&self, index: Index) -> Option<&Stored> {
        if index < self.first {
            return None;
        }
        self.entries.get((index - self.first) as usize)
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        if index + 1 == self.first {
            return Some(self.compacted_term);
        }
        self.get(index).map(|s| s.term)
    }

    fn chain(&self, index: Index) -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        if index + 1 == self.first {
            return Some(self.compacted_chain);
        }
        self.get(index).map(|s| s.chain)
    }

    /// The term and chain hash of the entry at `index` (index 0 and the compaction point
    /// included).
    pub fn id(&self, index: Index) -> Option<EntryId> {
        Some(EntryId {
            term: self.term(index)?,
            chain: self.chain(index)?,
        })
    }

    fn apply(&mut self, write: &Write) -> Result<(), StorageError> {
        match write {
            Write::HardState(hs) => self.hard_state = *hs,
            Write::Append(s) => {
                if s.kind == EntryKind::Membership {
                    self.configs.push(self.last_index() + 1);
                }
                self.entries.push(s.clone())
            }
            Write::Truncate(from) => {
                if *from < self.first {
                    return Err(StorageError::Compacted);
                }
                self.entries.truncate((from - self.first) as usize);
                while self.configs.last().is_some_and(|&c| c >= *from) {
                    self.configs.pop();
                }
            }
            Write::SaveSnapshot(meta, data) => self.snapshot = Some((*meta, data.clone())),
            Write::Install(meta, data, chain) => {
                // The log holds the snapshot's last entry (or compacted exactly through
                // it): the entries after it stay.
                if self.term(meta.index) == Some(meta.term) {
                    self.apply(&Write::Compact(meta.index))?;
                } else {
                    self.entries.clear();
                    self.first = meta.index + 1;
                    self.compacted_term = meta.term;
                    self.compacted_chain = *chain;
                    self.configs.clear();
                    if !meta.config().is_empty() {
                        self.configs.push(meta.index);
                    }
                }
                self.snapshot = Some((*meta, data.clone()));
            }
            Write::Compact(through) => {
                if *through < self.first {
                    return Ok(());
                }
                let id = self.id(*through).ok_or(StorageError::OutOfRange)?;
                self.entries.drain(..(through + 1 - self.first) as usize);
                self.first = through + 1;
                self.compacted_term = id.term;
                self.compacted_chain = id.chain;
            }
        }
        Ok(())
    }

    /// Forgets the vote and moves the term back by one (never below the last entry's
    /// term): what a disk that silently loses the latest hard-state write would leave. Used
    /// only by the deliberately broken simulation modes.
    pub fn forget_vote(&mut self) {
        let last_term = self.term(self.last_index()).unwrap_or(0);
        self.hard_state = HardState {
            current_term: self
                .hard_state
                .current_term
                .saturating_sub(1)
                .max(last_term),
            voted_for: None,
        };
    }

    /// Drops the last `n` entries (never compacted ones): a disk that loses writes it had
    /// reported durable. Used only by the deliberately broken simulation modes.
    pub fn forget_entries(&mut self, n: usize) {
        let keep = self.entries.len().saturating_sub(n);
        self.entries.truncate(keep);
    }
}

impl LogView for LogImage {
    fn last_index(&self) -> Index {
        LogImage::last_index(self)
    }
    fn entry_id(&self, index: Index) -> Option<EntryId> {
        self.id(index)
    }
    fn compacted_index(&self) -> Index {
        self.first - 1
    }
}

/// Hash of one entry chained to the hash of the entry before it.
pub fn chain_hash(prev: u64, index: Index, term: Term, kind: EntryKind, data: &[u8]) -> u64 {
    let mut h = mix64(prev ^ 0x243F_6A88_85A3_08D3) ^ index;
    h = mix64(h) ^ term;
    h = mix64(h) ^ (kind == EntryKind::Noop) as u64;
    for chunk in data.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(word));
    }
    mix64(h ^ data.len() as u64)
}

/// A [`LogStorage`] with a durable image and a queue of writes not yet durable.
#[derive(Clone, Debug, Default)]
pub struct SimLog {
    live: LogImage,
    durable: LogImage,
    pending: VecDeque<Write>,
    /// Writes made so far (the sequence number of the latest one).
    written: u64,
    /// Entries appended since the last [`SimLog::take_appended`], for the oracles.
    appended: Vec<(Index, EntryId)>,
    /// Truncations so far, for the Leader Append-Only oracle.
    truncations: u64,
    /// The snapshot being received from a leader (volatile).
    incoming: IncomingSnapshot,
    /// Snapshots installed from a leader since the last [`SimLog::take_installed`].
    installed: Vec<(Index, EntryId)>,
}

impl SimLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log that restarts from `image` (everything in it is durable).
    pub fn from_image(image: LogImage) -> Self {
        SimLog {
            live: image.clone(),
            durable: image,
            ..Self::default()
        }
    }

    /// The sequence number of the latest write: pass it to [`SimLog::flush_through`] when
    /// the fsync that started now completes.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes not yet durable.
    pub fn unsynced(&self) -> usize {
        self.pending.len()
    }

    /// Makes the writes through sequence number `barrier` durable, in order.
    pub fn flush_through(&mut self, barrier: u64) {
        let mut first = self.written - self.pending.len() as u64 + 1;
        while first <= barrier {
            let Some(write) = self.pending.pop_front() else {
                break;
            };
            // The write succeeded on the live view, so it succeeds on the durable image,
            // which went through the same writes before it.
            let _ = self.durable.apply(&write);
            first += 1;
        }
    }

    /// What survives a crash now: the durable image plus the first `keep_unsynced` writes
    /// that were not yet durable (a disk may have written some of them out).
    pub fn crash(&self, keep_unsynced: usize) -> LogImage {
        let mut image = self.durable.clone();
        for write in self.pending.iter().take(keep_unsynced) {
            let _ = image.apply(write);
        }
        image
    }

    /// The durable image.
    pub fn durable(&self) -> &LogImage {
        &self.durable
    }

    /// The live view (what the node reads).
    pub fn live(&self) -> &LogImage {
        &self.live
    }

    /// The entries appended since the last call, with their ids (for Log Matching).
    pub fn take_appended(&mut self) -> std::vec::Drain<'_, (Index, EntryId)> {
        self.appended.drain(..)
    }

    /// Whether entries were appended since the last [`SimLog::take_appended`].
    pub fn has_appended(&self) -> bool {
        !self.appended.is_empty()
    }

    /// How many times a suffix was truncated.
    pub fn truncations(&self) -> u64 {
        self.truncations
    }

    /// Keeps `data` as the host's snapshot described by `meta` (a write like the others:
    /// durable with the next sync). Compact through `meta.index` afterwards.
    pub fn save_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
        self.write(Write::SaveSnapshot(meta, Rc::from(data)))
    }

    /// Whether snapshots were installed since the last [`SimLog::take_installed`].
    pub fn has_installed(&self) -> bool {
        !self.installed.is_empty()
    }

    /// The snapshots installed from a leader since the last call, with the id of their last
    /// included entry (for the oracles).
    pub fn take_installed(&mut self) -> std::vec::Drain<'_, (Index, EntryId)> {
        self.installed.drain(..)
    }

    fn write(&mut self, write: Write) -> Result<(), StorageError> {
        self.live.apply(&write)?;
        self.pending.push_back(write);
        self.written += 1;
        Ok(())
    }
}

impl LogView for SimLog {
    fn last_index(&self) -> Index {
        self.live.last_index()
    }
    fn entry_id(&self, index: Index) -> Option<EntryId> {
        self.live.id(index)
    }
    fn compacted_index(&self) -> Index {
        self.live.first - 1
    }
}

impl LogStorage for SimLog {
    fn hard_state(&self) -> HardState {
        self.live.hard_state
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.write(Write::HardState(hard_state))
    }

    fn first_index(&self) -> Index {
        self.live.first
    }

    fn last_index(&self) -> Index {
        self.live.last_index()
    }

    fn term(&self, index: Index) -> Option<Term> {
        // Index 0 has term 0 only in a log never compacted.
        if index + 1 < self.live.first {
            return None;
        }
        self.live.term(index)
    }

    fn entry(&self, index: Index) -> Option<Entry<'_>> {
        self.live.get(index).map(|s| Entry {
            index,
            term: s.term,
            kind: s.kind,
            data: &s.data,
        })
    }

    fn append(&mut self, entry: &Entry<'_>) -> Result<(), StorageError> {
        let last = self.live.last_index();
        if entry.index != last + 1 {
            return Err(StorageError::OutOfRange);
        }
        let prev = self.live.chain(last).ok_or(StorageError::OutOfRange)?;
        let chain = chain_hash(prev, entry.index, entry.term, entry.kind, entry.data);
        self.write(Write::Append(Stored {
            term: entry.term,
            kind: entry.kind,
            data: Rc::from(entry.data),
            chain,
        }))?;
        self.appended.push((
            entry.index,
            EntryId {
                term: entry.term,
                chain,
            },
        ));
        Ok(())
    }

    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        if from <= self.live.last_index() {
            self.truncations += 1;
        }
        self.write(Write::Truncate(from))
    }

    fn compact(&mut self, through: Index) -> Result<(), StorageError> {
        self.write(Write::Compact(through))
    }

    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.live.snapshot.as_ref().map(|(m, _)| *m)
    }

    fn snapshot_chunk(&self, offset: u64, max: usize) -> Result<&[u8], StorageError> {
        let (_, data) = self
            .live
            .snapshot
            .as_ref()
            .ok_or(StorageError::Unavailable)?;
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
        let chain = crate::sim::kv::snapshot_chain(&data).ok_or(StorageError::OutOfRange)?;
        self.write(Write::Install(*meta, Rc::from(data), chain))?;
        let id = self.live.id(meta.index).ok_or(StorageError::OutOfRange)?;
        self.installed.push((meta.index, id));
        Ok(())
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
    fn unsynced_writes_are_lost_in_a_crash() {
        let mut log = SimLog::new();
        log.set_hard_state(HardState {
            current_term: 1,
            voted_for: Some(2),
        })
        .expect("hard state");
        log.append(&e(1, 1, b"a")).expect("append");
        let barrier = log.written();
        log.append(&e(2, 1, b"b")).expect("append");
        assert_eq!(log.crash(0).last_index(), 0);
        log.flush_through(barrier);
        let image = log.crash(0);
        assert_eq!(image.last_index(), 1);
        assert_eq!(image.hard_state().voted_for, Some(2));
        assert_eq!(log.crash(1).last_index(), 2, "a torn crash keeps a prefix");
        let restarted = SimLog::from_image(image);
        assert_eq!(
            restarted.entry(1).map(|x| x.data.to_vec()),
            Some(b"a".to_vec())
        );
        assert_eq!(restarted.entry(2), None);
    }

    #[test]
    fn chain_hashes_identify_prefixes() {
        let mut a = SimLog::new();
        let mut b = SimLog::new();
        a.append(&e(1, 1, b"x")).expect("append");
        b.append(&e(1, 1, b"x")).expect("append");
        a.append(&e(2, 1, b"y")).expect("append");
        b.append(&e(2, 1, b"z")).expect("append");
        assert_eq!(a.entry_id(1), b.entry_id(1));
        assert_ne!(a.entry_id(2), b.entry_id(2));
        b.truncate_suffix(2).expect("truncate");
        assert_eq!(b.truncations(), 1);
        b.append(&e(2, 1, b"y")).expect("append");
        assert_eq!(a.entry_id(2), b.entry_id(2));
        assert_eq!(a.take_appended().count(), 2);
        assert_eq!(b.take_appended().count(), 3);
    }

    /// Sim seed 10490 (with the operator adding voters members do not know): installing a
    /// snapshot at the point the log is compacted through, with its term, kept no entry
    /// after it, unlike every other log of the project.
    #[test]
    fn a_snapshot_installed_at_the_compaction_point_keeps_the_entries_after_it() {
        let mut log = SimLog::new();
        for i in 1..=4 {
            log.append(&e(i, 1, b"v")).expect("append");
        }
        log.compact(2).expect("compact");
        let meta = SnapshotMeta::new(2, 1, 16, &[]).expect("meta");
        let mut data = vec![0u8; 16];
        let chain = log.live().id(2).expect("entry 2").chain;
        data[8..16].copy_from_slice(&chain.to_le_bytes());
        log.receive_snapshot_chunk(&meta, 0, &data).expect("chunk");
        log.install_snapshot(&meta).expect("install");
        let live = log.live();
        assert_eq!((live.id(3).is_some(), live.id(4).is_some()), (true, true));
        assert_eq!(LogStorage::first_index(&log), 3);
    }

    #[test]
    fn truncations_and_compactions_reach_the_durable_image_in_order() {
        let mut log = SimLog::new();
        for i in 1..=4 {
            log.append(&e(i, 1, b"v")).expect("append");
        }
        log.flush_through(log.written());
        log.truncate_suffix(3).expect("truncate");
        log.append(&e(3, 2, b"w")).expect("append");
        log.compact(2).expect("compact");
        assert_eq!(log.durable().last_index(), 4);
        log.flush_through(log.written());
        let d = log.durable();
        assert_eq!(d.last_index(), 3);
        assert_eq!(d.id(3).map(|x| x.term), Some(2));
        assert_eq!(d.id(2), log.entry_id(2));
        assert_eq!(log.first_index(), 3);
    }
}
