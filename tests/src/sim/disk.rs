//! The host's durable store: what survives a crash, changed only by the node's
//! [`Persist`] batches, as the host performs them.
//!
//! A [`Disk`] holds two [`LogImage`]s. When the host drains an [`Output::Persist`] batch
//! it *performs* it at once ([`Disk::perform`]): the batch is applied to the *written*
//! image (the page cache: what the host reads back for [`Output::Fetch`] and for the
//! snapshot chunks of [`Output::SendSnapshot`]) and queued. When the simulated flush
//! completes ([`Disk::flush_through`]) the queued batches through its token are applied,
//! in order, to the *durable* image, and the host may acknowledge them with
//! [`Node::persisted`](coracle::Node::persisted). A crash keeps the durable image, and
//! with a torn write a prefix of the queued batches, the last of them perhaps cut within
//! its entries ([`Disk::crash`]); after a failed flush no queued batch becomes durable
//! ([`Disk::fail`]). Batches are applied exactly as [`coracle::MemStore`], the reference
//! store, performs them.
//!
//! Each entry also carries a *chain hash*: a hash of its own index, term, kind and data
//! and of the chain hash of the entry before it. Two logs hold the same prefix through
//! index `i` exactly when their chain hashes at `i` are equal (up to hash collisions),
//! which lets the oracles check Log Matching and compare committed prefixes in O(1). A
//! snapshot's bytes start with the chain hash of its last included entry (see
//! [`crate::sim::kv`]), so the chain goes on across a compaction or an installed snapshot.
//!
//! [`Output::Persist`]: coracle::Output::Persist
//! [`Output::Fetch`]: coracle::Output::Fetch
//! [`Output::SendSnapshot`]: coracle::Output::SendSnapshot

use crate::oracle::{EntryId, LogView};
use crate::sim::kv::snapshot_chain;
use crate::sim::rng::mix64;
use coracle::{
    Entry, EntryKind, HardState, Index, Persist, SnapshotMeta, SnapshotWrite, SyncToken, Term,
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

/// The kept snapshot: its metadata, its bytes, and the chain hash of its last entry.
#[derive(Clone, Debug)]
struct Kept {
    meta: SnapshotMeta,
    bytes: Rc<[u8]>,
    chain: u64,
}

/// Bytes of a snapshot being received, as a batch carries them.
#[derive(Clone, Debug)]
struct ChunkWrite {
    meta: SnapshotMeta,
    offset: u64,
    data: Rc<[u8]>,
}

/// A change of the kept snapshot, as a batch carries it.
#[derive(Clone, Debug)]
enum SnapshotChange {
    Installed(SnapshotMeta),
    Taken(SnapshotMeta),
}

/// A [`Persist`] batch the host performed, owning what it writes, until it is durable.
#[derive(Clone, Debug)]
pub struct Batch {
    token: SyncToken,
    hard_state: Option<HardState>,
    chunk: Option<Box<ChunkWrite>>,
    snapshot: Option<Box<SnapshotChange>>,
    reset: Option<(Index, Term)>,
    truncate_from: Option<Index>,
    entries: Vec<DiskEntry>,
    compact_through: Option<Index>,
}

impl Batch {
    /// Copies `persist` out of the node; `None` if its entries are not all in the memory
    /// log (the node handed out a batch it cannot back).
    pub fn of(persist: &Persist<'_>) -> Option<Batch> {
        Batch::copy(&persist.batch())
    }

    /// Copies the writes of `persist`; `None` if its entries cannot all be read.
    pub fn copy(persist: &coracle::Batch<'_>) -> Option<Batch> {
        let entries: Vec<_> = persist.entries.iter().map(DiskEntry::from).collect();
        if entries.len() != persist.entries.len() {
            return None;
        }
        Some(Batch {
            token: persist.token,
            hard_state: persist.hard_state,
            chunk: persist.snapshot_chunk.map(|c| {
                Box::new(ChunkWrite {
                    meta: *c.meta,
                    offset: c.offset,
                    data: Rc::from(c.data),
                })
            }),
            snapshot: persist.snapshot.map(|s| {
                Box::new(match s {
                    SnapshotWrite::Installed(m) => SnapshotChange::Installed(*m),
                    SnapshotWrite::Taken(m) => SnapshotChange::Taken(*m),
                })
            }),
            reset: persist.reset,
            truncate_from: persist.truncate_from,
            entries,
            compact_through: persist.compact_through,
        })
    }

    /// Its token.
    pub fn token(&self) -> SyncToken {
        self.token
    }

    /// Entries it appends.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// What it writes, for traces.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(hs) = self.hard_state {
            parts.push(format!("term {} vote {:?}", hs.current_term, hs.voted_for));
        }
        if let Some(c) = self.chunk.as_deref() {
            parts.push(format!(
                "{} bytes at {} of snapshot {}",
                c.data.len(),
                c.offset,
                c.meta.index
            ));
        }
        match self.snapshot.as_deref() {
            Some(SnapshotChange::Installed(m)) => {
                parts.push(format!("install {}/{}", m.index, m.term))
            }
            Some(SnapshotChange::Taken(m)) => {
                parts.push(format!("keep own {}/{}", m.index, m.term))
            }
            None => {}
        }
        if let Some((index, term)) = self.reset {
            parts.push(format!("reset after {index}/{term}"));
        }
        if let Some(from) = self.truncate_from {
            parts.push(format!("truncate from {from}"));
        }
        if let (Some(first), Some(last)) = (self.entries.first(), self.entries.last()) {
            parts.push(format!("entries {}..={}", first.index, last.index));
        }
        if let Some(through) = self.compact_through {
            parts.push(format!("compact through {through}"));
        }
        parts.join(", ")
    }
}

/// What applying a batch to the written image shows the oracles.
#[derive(Clone, Copy, Debug)]
pub enum Observed {
    /// An entry was appended (or replaced one with another prefix).
    Appended(Index, EntryId),
    /// A snapshot received from a leader became the kept one; its last entry.
    Installed(Index, EntryId),
}

/// The content of a log store: entries with their chain hashes, compaction point, hard
/// state, kept snapshot, a snapshot being received, and the host's own snapshots not yet
/// kept. Both images of a [`Disk`] are one of these.
#[derive(Clone, Debug)]
pub struct LogImage {
    entries: Vec<Stored>,
    /// Index of `entries[0]`.
    first: Index,
    compacted_term: Term,
    compacted_chain: u64,
    hard_state: HardState,
    snapshot: Option<Kept>,
    /// A snapshot being received from a leader: its metadata and the bytes so far.
    incoming: Option<(SnapshotMeta, Vec<u8>)>,
    /// The host's own snapshots, by index, until one becomes the kept one.
    taken: Vec<(Index, Rc<[u8]>)>,
    /// Indexes of the membership entries appended (newest last; compacted ones stay).
    configs: Vec<Index>,
    /// Times entries were removed from the end (truncations, resets, rewrites).
    truncations: u64,
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
            incoming: None,
            taken: Vec::new(),
            configs: Vec::new(),
            truncations: 0,
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
        self.snapshot.as_ref().map(|k| (&k.meta, &k.bytes[..]))
    }

    /// The index of the newest membership entry appended (a compacted one included; 0 if
    /// none). A configuration taken from an installed snapshot counts at the snapshot's
    /// index.
    pub fn config_index(&self) -> Index {
        self.configs.last().copied().unwrap_or(0)
    }

    /// How many times entries were removed from the end of the log.
    pub fn truncations(&self) -> u64 {
        self.truncations
    }

    fn get(&self, index: Index) -> Option<&Stored> {
        if index < self.first {
            return None;
        }
        self.entries.get((index - self.first) as usize)
    }

    /// The entry at `index`, if kept.
    pub fn entry(&self, index: Index) -> Option<Entry<'_>> {
        self.get(index).map(|s| Entry {
            index,
            term: s.term,
            kind: s.kind,
            data: &s.data,
        })
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

    /// Appends `entry` after the last one (tests build logs by hand with it).
    pub fn append(&mut self, entry: &Entry<'_>) -> Result<EntryId, String> {
        self.put(entry.index, entry.term, entry.kind, Rc::from(entry.data))
    }

    /// Writes an entry at `index`: appended after the last one, or replacing the suffix
    /// from `index` unless the same entry is there already.
    fn put(
        &mut self,
        index: Index,
        term: Term,
        kind: EntryKind,
        data: Rc<[u8]>,
    ) -> Result<EntryId, String> {
        let last = self.last_index();
        if index < self.first || index > last + 1 {
            return Err(format!(
                "entry {index} written to a log holding {}..={last}",
                self.first
            ));
        }
        let prev = self.chain(index - 1).unwrap_or(0);
        let chain = chain_hash(prev, index, term, kind, &data);
        let id = EntryId { term, chain };
        if index <= last {
            if self.chain(index) == Some(chain) {
                return Ok(id);
            }
            self.cut(index);
        }
        if kind == EntryKind::Membership {
            self.configs.push(index);
        }
        self.entries.push(Stored {
            term,
            kind,
            data,
            chain,
        });
        Ok(id)
    }

    /// Drops the entries from `from` on.
    fn cut(&mut self, from: Index) {
        if from > self.last_index() {
            return;
        }
        self.truncations += 1;
        self.entries.truncate((from - self.first) as usize);
        while self.configs.last().is_some_and(|&c| c >= from) {
            self.configs.pop();
        }
    }

    /// Performs `batch` in the contract's order (the first `entries` of its entries, and
    /// its compaction if `compact`), reporting what the oracles observe. An error is a
    /// batch that does not fit the store: the node asked for writes it cannot mean.
    fn apply(
        &mut self,
        batch: &Batch,
        entries: usize,
        compact: bool,
        observe: &mut impl FnMut(Observed),
    ) -> Result<(), String> {
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        if let Some(ChunkWrite { meta, offset, data }) = batch.chunk.as_deref() {
            let fresh = *offset == 0 || self.incoming.as_ref().is_none_or(|(m, _)| m != meta);
            if fresh {
                self.incoming = Some((*meta, Vec::new()));
            }
            if let Some((_, bytes)) = self.incoming.as_mut() {
                if *offset > bytes.len() as u64 {
                    return Err(format!(
                        "snapshot chunk at offset {offset} written after {} bytes",
                        bytes.len()
                    ));
                }
                bytes.truncate(*offset as usize);
                bytes.extend_from_slice(data);
            }
        }
        match batch.snapshot.as_deref() {
            Some(SnapshotChange::Installed(meta)) => {
                let bytes = match self.incoming.take() {
                    Some((m, bytes)) if m == *meta => bytes,
                    _ => {
                        return Err(format!(
                            "snapshot through {} installed, but its chunks were not written",
                            meta.index
                        ))
                    }
                };
                let chain = snapshot_chain(&bytes).ok_or("an installed snapshot too short")?;
                observe(Observed::Installed(
                    meta.index,
                    EntryId {
                        term: meta.term,
                        chain,
                    },
                ));
                self.snapshot = Some(Kept {
                    meta: *meta,
                    bytes: Rc::from(bytes),
                    chain,
                });
            }
            Some(SnapshotChange::Taken(meta)) => {
                let bytes = self
                    .taken
                    .iter()
                    .find(|(i, _)| *i == meta.index)
                    .map(|(_, b)| b.clone())
                    .ok_or_else(|| {
                        format!(
                            "snapshot through {} recorded, but the host never saved it",
                            meta.index
                        )
                    })?;
                self.taken.retain(|(i, _)| *i > meta.index);
                let chain = snapshot_chain(&bytes).ok_or("a taken snapshot too short")?;
                self.snapshot = Some(Kept {
                    meta: *meta,
                    bytes,
                    chain,
                });
            }
            None => {}
        }
        if let Some((index, term)) = batch.reset {
            let chain = match &self.snapshot {
                Some(k) if k.meta.index == index && k.meta.term == term => k.chain,
                _ => return Err(format!("log reset after {index} without a snapshot there")),
            };
            if !self.entries.is_empty() {
                self.truncations += 1;
            }
            self.entries.clear();
            self.first = index + 1;
            self.compacted_term = term;
            self.compacted_chain = chain;
            self.configs.clear();
            if self
                .snapshot
                .as_ref()
                .is_some_and(|k| !k.meta.config().is_empty())
            {
                self.configs.push(index);
            }
        }
        if let Some(from) = batch.truncate_from {
            if from < self.first {
                return Err(format!(
                    "truncation from {from}, below the first index {}",
                    self.first
                ));
            }
            self.cut(from);
        }
        for e in batch.entries.iter().take(entries) {
            let id = self.put(e.index, e.term, e.kind, e.data.clone())?;
            observe(Observed::Appended(e.index, id));
        }
        if let (Some(through), true) = (batch.compact_through, compact) {
            if through >= self.first {
                let id = self
                    .id(through)
                    .ok_or_else(|| format!("compaction through {through}, past the log"))?;
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
    /// reported durable (`lose-tail`, and the deliberately broken simulation modes).
    pub fn forget_entries(&mut self, n: usize) {
        let keep = self.entries.len().saturating_sub(n);
        self.cut(self.first + keep as u64);
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

/// An entry on its way to or from the disk: written by a batch, or read back for
/// [`Output::Fetch`](coracle::Output::Fetch).
#[derive(Clone, Debug)]
pub struct DiskEntry {
    index: Index,
    term: Term,
    kind: EntryKind,
    data: Rc<[u8]>,
}

impl DiskEntry {
    /// Borrows it as an entry (for [`Node::fetched`](coracle::Node::fetched)).
    pub fn as_entry(&self) -> Entry<'_> {
        Entry {
            index: self.index,
            term: self.term,
            kind: self.kind,
            data: &self.data,
        }
    }
}

impl From<Entry<'_>> for DiskEntry {
    fn from(e: Entry<'_>) -> Self {
        DiskEntry {
            index: e.index,
            term: e.term,
            kind: e.kind,
            data: Rc::from(e.data),
        }
    }
}

/// A host's durable store: a durable image, and the batches performed since the last
/// flush (the written image is the durable one with them applied). See the
/// [module documentation](self).
#[derive(Clone, Debug, Default)]
pub struct Disk {
    durable: LogImage,
    written: LogImage,
    pending: VecDeque<Batch>,
}

impl Disk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Performs a batch the node handed out: applied to the written image at once, durable
    /// with the flush of its token. An error is a batch that does not fit what the disk
    /// holds.
    pub fn perform(
        &mut self,
        batch: Batch,
        observe: &mut impl FnMut(Observed),
    ) -> Result<(), String> {
        let entries = batch.entries.len();
        self.written.apply(&batch, entries, true, observe)?;
        self.pending.push_back(batch);
        Ok(())
    }

    /// The flush of the batches through `token` completed: they are durable.
    pub fn flush_through(&mut self, token: SyncToken) {
        while self.pending.front().is_some_and(|b| b.token <= token) {
            let Some(batch) = self.pending.pop_front() else {
                break;
            };
            // It applied to the written image, which went through the same batches.
            let _ = self
                .durable
                .apply(&batch, batch.entries.len(), true, &mut |_| {});
        }
    }

    /// A flush failed: what it and every later batch wrote never becomes durable (after
    /// a failed flush the page cache cannot be trusted to reach the disk). The written
    /// image keeps them until the host's process goes ([`Disk::crash`]).
    pub fn fail(&mut self) {
        self.pending.clear();
    }

    /// A crash: the durable image stays, and the first `keep` of the batches not yet
    /// flushed (a disk that wrote some of them out before the power went), the last of
    /// those with only its first `cut` entries if `cut` is given (a torn write).
    pub fn crash(&mut self, keep: usize, cut: Option<usize>) {
        let keep = keep.min(self.pending.len());
        for k in 0..keep {
            let batch = &self.pending[k];
            let (entries, compact) = match cut {
                Some(n) if k + 1 == keep => (n.min(batch.entries.len()), false),
                _ => (batch.entries.len(), true),
            };
            let _ = self.durable.apply(batch, entries, compact, &mut |_| {});
        }
        self.pending.clear();
        self.written = self.durable.clone();
    }

    /// Batches performed but not yet durable.
    pub fn unflushed(&self) -> usize {
        self.pending.len()
    }

    /// The batches performed but not yet durable, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Batch> {
        self.pending.iter()
    }

    /// What survives a crash now (but for a torn write).
    pub fn durable(&self) -> &LogImage {
        &self.durable
    }

    /// Changes the durable image by hand, to break it on purpose (`lose-tail`, the broken
    /// modes), while the node is down (nothing is pending).
    pub fn damage(&mut self, f: impl FnOnce(&mut LogImage)) {
        debug_assert!(self.pending.is_empty());
        f(&mut self.durable);
        self.written = self.durable.clone();
    }

    /// Everything written, durable or not: what the host reads back, and what the node's
    /// memory log must match.
    pub fn written(&self) -> &LogImage {
        &self.written
    }

    /// Saves the host's own snapshot of its state machine at `index` (written and flushed
    /// at once, before the node is told with
    /// [`Node::snapshot_taken`](coracle::Node::snapshot_taken)).
    pub fn save_taken(&mut self, index: Index, bytes: Vec<u8>) {
        let bytes: Rc<[u8]> = Rc::from(bytes);
        for image in [&mut self.durable, &mut self.written] {
            image.taken.retain(|(i, _)| *i != index);
            image.taken.push((index, bytes.clone()));
        }
    }

    /// The chunk of the kept snapshot [`Output::SendSnapshot`](coracle::Output::SendSnapshot)
    /// asks for: up to `max_len` bytes at `offset` of the snapshot through `index`, and
    /// whether they reach its end; `None` if the kept snapshot is another one or the offset
    /// is past its end (as [`coracle::MemStore::snapshot_chunk`]).
    pub fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        max_len: usize,
    ) -> Option<(&[u8], bool)> {
        let kept = self.written.snapshot.as_ref()?;
        if kept.meta.index != index {
            return None;
        }
        let bytes = &kept.bytes;
        let start = usize::try_from(offset).ok()?;
        if start > bytes.len() || (start == bytes.len() && start > 0) {
            return None;
        }
        let end = start.saturating_add(max_len).min(bytes.len());
        Some((&bytes[start..end], end == bytes.len()))
    }

    /// Reads back the entries `from..=to` (those it holds, from `from` on) for
    /// [`Output::Fetch`](coracle::Output::Fetch).
    pub fn read(&self, from: Index, to: Index) -> Vec<DiskEntry> {
        (from..=to)
            .map_while(|index| {
                self.written.get(index).map(|s| DiskEntry {
                    index,
                    term: s.term,
                    kind: s.kind,
                    data: s.data.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kv::Kv;
    use crate::sim::memory::{MemoryKind, MemoryLog};
    use coracle::conformance::durable::{self, Crash, DurableStore, Recovered};
    use coracle::{Config, LogStorage, MemStore, Node, Output};

    fn e(index: Index, term: Term, data: &[u8]) -> Entry<'_> {
        Entry {
            index,
            term,
            kind: EntryKind::Command,
            data,
        }
    }

    /// A single-node cluster on `disk`: elects itself, proposes `commands`, and performs
    /// every batch (on `store` too); returns the tokens handed out.
    fn single_node_with(
        disk: &mut Disk,
        store: &mut MemStore,
        commands: &[&[u8]],
    ) -> (Node<MemoryLog>, Vec<SyncToken>) {
        let mut node =
            Node::new(Config::new(1, 1), MemoryLog::new(MemoryKind::Vec), &[1]).expect("node");
        node.campaign();
        let mut tokens = Vec::new();
        let mut drain = |node: &mut Node<MemoryLog>, tokens: &mut Vec<SyncToken>| {
            while let Some(out) = node.poll_output() {
                if let Output::Persist(p) = out {
                    store.persist(&p.batch());
                    let batch = Batch::of(&p).expect("batch");
                    tokens.push(batch.token());
                    disk.perform(batch, &mut |_| {}).expect("perform");
                }
            }
        };
        drain(&mut node, &mut tokens);
        for c in commands {
            node.persisted(*tokens.last().expect("a batch"));
            drain(&mut node, &mut tokens);
            node.propose(c).expect("propose");
            drain(&mut node, &mut tokens);
        }
        (node, tokens)
    }

    fn single_node(disk: &mut Disk, commands: &[&[u8]]) -> (Node<MemoryLog>, Vec<SyncToken>) {
        single_node_with(disk, &mut MemStore::new(), commands)
    }

    #[test]
    fn batches_not_flushed_are_lost_in_a_crash_and_a_torn_write_keeps_a_prefix() {
        let mut disk = Disk::new();
        let (_, tokens) = single_node(&mut disk, &[b"a", b"b", b"c"]);
        assert_eq!(disk.written().last_index(), 4, "a no-op and three commands");
        assert_eq!(disk.durable().last_index(), 0);
        // Batches: the vote, the no-op, then one per command.
        disk.flush_through(tokens[2]);
        assert_eq!(disk.durable().last_index(), 2);
        assert_eq!(disk.durable().hard_state().current_term, 1);
        let mut torn = disk.clone();
        torn.crash(1, None);
        assert_eq!(torn.written().last_index(), 3, "one more batch survived");
        let mut cut = disk.clone();
        cut.crash(1, Some(0));
        assert_eq!(cut.durable().last_index(), 2, "its entries did not");
        disk.crash(0, None);
        assert_eq!(disk.durable().last_index(), 2);
        assert_eq!(disk.written().last_index(), 2);
        let log = MemoryLog::recover(MemoryKind::Cached(0), disk.durable()).expect("recover");
        assert_eq!((log.first_index(), log.last_index()), (1, 2));
        assert_eq!(log.hard_state().current_term, 1);
    }

    #[test]
    fn a_failed_flush_loses_every_pending_batch() {
        let mut disk = Disk::new();
        let (_, tokens) = single_node(&mut disk, &[b"a", b"b"]);
        disk.flush_through(tokens[1]);
        disk.fail();
        assert_eq!(disk.unflushed(), 0);
        disk.flush_through(*tokens.last().expect("tokens"));
        assert_eq!(
            disk.durable().last_index(),
            1,
            "nothing after the failure is durable"
        );
        disk.crash(0, None);
        assert_eq!(disk.written().last_index(), 1);
    }

    /// The disk performs batches as `MemStore`, the reference store, does.
    #[test]
    fn batches_apply_as_the_reference_store_applies_them() {
        let mut disk = Disk::new();
        let mut store = MemStore::new();
        let (mut node, _) = single_node_with(&mut disk, &mut store, &[b"a", b"b", b"c", b"d"]);
        // A snapshot and its compaction.
        let last = disk.pending().last().map(Batch::token).expect("batches");
        node.persisted(last);
        let mut applied = Kv::new();
        while let Some(out) = node.poll_output() {
            if let Output::Apply(e) = out {
                applied.skip(e.index);
            }
        }
        let index = applied.applied();
        let chain = disk.written().id(index).expect("applied entry").chain;
        disk.save_taken(index, applied.snapshot(chain));
        store.save_taken(index, applied.snapshot(chain));
        node.snapshot_taken(index).expect("snapshot");
        while let Some(out) = node.poll_output() {
            if let Output::Persist(p) = out {
                store.persist(&p.batch());
                disk.perform(Batch::of(&p).expect("batch"), &mut |_| {})
                    .expect("perform");
            }
        }
        let w = disk.written();
        assert_eq!(w.first_index(), store.compacted.0 + 1);
        assert_eq!(w.last_index(), store.last_index());
        assert_eq!(w.hard_state(), store.hard_state);
        assert_eq!(
            w.snapshot().map(|(m, b)| (*m, b.to_vec())),
            store.snapshot.clone()
        );
        for i in w.first_index()..=w.last_index() {
            assert_eq!(w.entry(i), store.entry(i), "entry {i}");
        }
        let mut a = MemoryLog::new(MemoryKind::Vec);
        store.recover(&mut a).expect("recover");
        let b = MemoryLog::recover(MemoryKind::Vec, w).expect("recover");
        assert_eq!(
            (a.first_index(), a.last_index()),
            (b.first_index(), b.last_index())
        );
        assert_eq!(a.snapshot_meta(), b.snapshot_meta());
    }

    /// A [`Disk`] as the core's durable-store conformance suite drives it: a batch is
    /// performed on the written image, a sync flushes every batch, a crash keeps the
    /// durable image and the batches the suite suggests (the last perhaps torn), and a
    /// reopen fills a memory log from the durable image as a simulated restart does.
    #[derive(Default)]
    struct SuiteDisk {
        disk: Disk,
        /// The token of the last batch performed.
        last: u64,
    }

    impl DurableStore for SuiteDisk {
        type Error = String;

        fn perform(&mut self, batch: &coracle::Batch<'_>) -> Result<(), String> {
            let copy = Batch::copy(batch).ok_or("entries that cannot be read")?;
            self.last = batch.token.0;
            self.disk.perform(copy, &mut |_| {})
        }

        fn save_taken(&mut self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), String> {
            self.disk.save_taken(meta.index, bytes.to_vec());
            Ok(())
        }

        fn sync(&mut self) -> Result<(), String> {
            self.disk.flush_through(SyncToken(self.last));
            Ok(())
        }

        fn crash(&mut self, hint: Crash) {
            self.disk.crash(hint.keep, hint.torn_entries);
        }

        fn reopen(&mut self) -> Result<Recovered, String> {
            let image = self.disk.durable();
            // A memory log that keeps no entry data: every entry is read back.
            let log =
                MemoryLog::recover(MemoryKind::Cached(0), image).map_err(|e| e.to_string())?;
            let mut recovered = Recovered::from_log(&log, |i| {
                self.disk.read(i, i).first().map(|e| e.as_entry().into())
            });
            recovered.snapshot_bytes = image.snapshot().map(|(_, b)| b.to_vec());
            recovered.incoming = image.incoming.clone();
            Ok(recovered)
        }
    }

    /// The core's durable-store conformance suite (its rules and what a seed does are in
    /// `coracle::conformance::durable`) against the simulator's disk, with crashes that
    /// keep some of the batches not flushed and tear the last: the disk the simulated
    /// nodes run on keeps the same contract as every real store.
    #[test]
    fn the_durable_store_conformance_suite_passes() {
        let options = durable::Options {
            // A snapshot's bytes start with a chain hash (`kv::snapshot_chain`).
            snapshot_bytes: 16..=300,
            ..durable::Options::default()
        };
        let report = durable::check(&options, SuiteDisk::default);
        assert!(report.crashes_that_lost_writes >= 10, "{report:?}");
    }

    #[test]
    fn chain_hashes_identify_prefixes() {
        let mut a = LogImage::new();
        let mut b = LogImage::new();
        a.append(&e(1, 1, b"x")).expect("append");
        b.append(&e(1, 1, b"x")).expect("append");
        a.append(&e(2, 1, b"y")).expect("append");
        b.append(&e(2, 1, b"z")).expect("append");
        assert_eq!(a.id(1), b.id(1));
        assert_ne!(a.id(2), b.id(2));
        b.forget_entries(1);
        assert_eq!(b.truncations(), 1);
        b.append(&e(2, 1, b"y")).expect("append");
        assert_eq!(a.id(2), b.id(2));
        assert!(b.append(&e(9, 1, b"y")).is_err(), "a gap");
    }
}
