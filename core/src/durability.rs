//! The durability contract (Figure 2, "persistent state ... updated on stable storage before
//! responding to RPCs"; thesis 10.2.1 for the leader), with no I/O inside a step.
//!
//! The node writes its memory log as it goes and gathers what must reach the host's durable
//! store into one batch: [`Output::Persist`](crate::Output::Persist) hands it out, with a
//! [`SyncToken`]. The host performs the batch on its store when it chooses (off the loop
//! if it likes), batches after batches in order, and reports with
//! [`Node::persisted`](crate::Node::persisted) once they are durable: many writes, one
//! flush. Answers and votes wait for the batches they depend on; the leader counts itself in
//! a quorum only for entries that are durable.

use crate::message::Entries;
use crate::storage::{LogStorage, SnapshotMeta};
use crate::types::{HardState, Index, Term};
use core::fmt;

/// The token of a [`Persist`] batch: every batch up to it must be durable when the host
/// hands it back to [`Node::persisted`](crate::Node::persisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SyncToken(pub u64);

/// A change of the kept snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SnapshotWrite<'a> {
    /// The snapshot received from the leader (its chunks, written by earlier and this
    /// batch) is complete: it is the kept snapshot now, described by this metadata.
    Installed(&'a SnapshotMeta),
    /// The host's own snapshot of its state machine at `meta.index` (already in its store:
    /// see [`Node::snapshot_taken`](crate::Node::snapshot_taken)) is the kept snapshot now:
    /// record its metadata with it.
    Taken(&'a SnapshotMeta),
}

impl SnapshotWrite<'_> {
    /// The metadata of the snapshot kept from now on.
    pub fn meta(&self) -> &SnapshotMeta {
        match self {
            SnapshotWrite::Installed(m) | SnapshotWrite::Taken(m) => m,
        }
    }
}

/// Bytes of a snapshot being received from the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SnapshotChunkWrite<'a> {
    /// The snapshot they belong to (a chunk at offset 0 starts a new one).
    pub meta: &'a SnapshotMeta,
    /// Where they go in it.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
}

/// What the host must write to its durable store, in the order of the fields, before it
/// reports the batch durable with [`Node::persisted`](crate::Node::persisted).
///
/// 1. `hard_state`: replace the term and vote.
/// 2. `snapshot_chunk`: write bytes of the snapshot being received.
/// 3. `snapshot`: the kept snapshot changes.
/// 4. `reset`: drop every entry; the log continues after `(index, term)`.
/// 5. `truncate_from`: drop the entries from this index on.
/// 6. `entries`: append these (consecutive, right after what the log then holds).
/// 7. `compact_through`: the entries through this index may be dropped. Not part of the
///    batch's durability: the host may do it whenever it likes, or never.
///
/// A crash may lose any suffix of the writes the host did not report durable; it must not
/// reorder them (a later write durable without an earlier one).
///
/// The node hands a batch out as a [`Persist`] (a small view: outputs are returned by
/// value, and most are small); [`Persist::batch`] gives this. A test of a durable store
/// builds one by hand.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Batch<'a> {
    /// Hand it back to [`Node::persisted`](crate::Node::persisted) once durable.
    pub token: SyncToken,
    /// The new term and vote.
    pub hard_state: Option<HardState>,
    /// Bytes of a snapshot being received.
    pub snapshot_chunk: Option<SnapshotChunkWrite<'a>>,
    /// The kept snapshot changes.
    pub snapshot: Option<SnapshotWrite<'a>>,
    /// Every entry goes; the log continues after this index, of this term.
    pub reset: Option<(Index, Term)>,
    /// The entries from this index on go (a conflicting suffix).
    pub truncate_from: Option<Index>,
    /// Entries to append.
    pub entries: Entries<'a>,
    /// Entries through this index may be dropped (covered by the kept snapshot).
    pub compact_through: Option<Index>,
}

/// A batch of writes for the durable store, as [`Output::Persist`](crate::Output::Persist)
/// hands it out: its [`token`](Persist::token) and a view of the node its
/// [`Batch`] reads from.
#[derive(Clone, Copy)]
pub struct Persist<'a> {
    /// Hand it back to [`Node::persisted`](crate::Node::persisted) once durable.
    pub token: SyncToken,
    durability: &'a Durability,
    log: &'a dyn LogStorage,
}

impl<'a> Persist<'a> {
    /// The writes to perform.
    pub fn batch(&self) -> Batch<'a> {
        let d = self.durability;
        let b = &d.handed;
        let from = match (b.append_from, b.truncate_from) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, _) => a,
        };
        let last = self.log.last_index();
        Batch {
            token: self.token,
            hard_state: b.hard_state.then(|| self.log.hard_state()),
            snapshot_chunk: b.chunk.map(|offset| SnapshotChunkWrite {
                meta: &d.chunk_meta,
                offset,
                data: self.log.staged_snapshot_chunk(),
            }),
            snapshot: b.snapshot.map(|kind| match kind {
                Kept::Installed => SnapshotWrite::Installed(&d.kept),
                Kept::Taken => SnapshotWrite::Taken(&d.kept),
            }),
            reset: b.reset,
            truncate_from: b.truncate_from,
            entries: match from {
                Some(from) if from <= last => {
                    Entries::from_log(self.log, from, (last + 1 - from) as usize)
                }
                _ => Entries::EMPTY,
            },
            compact_through: b.compact_through,
        }
    }
}

impl fmt::Debug for Persist<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.batch().fmt(f)
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Persist<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        self.batch().format(f)
    }
}

/// A message that may leave only once the writes up to `after` are durable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gated<M> {
    pub message: M,
    pub after: u64,
}

/// A change of the kept snapshot, as the open batch holds it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeptSnapshot {
    Installed(SnapshotMeta),
    Taken(SnapshotMeta),
}

/// Which change of the kept snapshot a batch carries (its metadata is in
/// [`Durability::kept`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kept {
    Installed,
    Taken,
}

/// The writes gathered for the next batch: flags and indexes only, so handing a batch
/// out copies a few words (the snapshot metadata, 300 bytes, stays in its slots).
#[derive(Clone, Copy, Debug, Default)]
struct OpenBatch {
    dirty: bool,
    hard_state: bool,
    /// Offset of a received chunk (its snapshot in [`Durability::chunk_meta`]).
    chunk: Option<u64>,
    snapshot: Option<Kept>,
    reset: Option<(Index, Term)>,
    truncate_from: Option<Index>,
    append_from: Option<Index>,
    compact_through: Option<Index>,
}

#[derive(Clone, Debug)]
pub(crate) struct Durability {
    /// Sequence number of the latest batch handed out.
    emitted: u64,
    /// Latest sequence number the host reported durable.
    pub synced: u64,
    open: OpenBatch,
    /// The batch handed out last: what a [`Persist`] reads.
    handed: OpenBatch,
    /// The snapshot of the chunk in the open (or last handed) batch.
    chunk_meta: SnapshotMeta,
    /// The kept snapshot the open (or last handed) batch records.
    kept: SnapshotMeta,
    /// The prefix of the current log that is durable.
    pub durable_index: Index,
    /// Batches not yet durable: (sequence number, last index of the log after it), clipped
    /// by later truncations.
    pending: heapless::Deque<(u64, Index), 8>,
    /// A write failed: nothing that depends on durability leaves any more.
    pub failed: bool,
    /// The host reports a flush that has not returned for too long
    /// ([`Node::set_storage_stalled`](crate::Node::set_storage_stalled)).
    pub stalled: bool,
}

impl Durability {
    pub fn new(durable_index: Index) -> Self {
        Durability {
            emitted: 0,
            synced: 0,
            open: OpenBatch::default(),
            handed: OpenBatch::default(),
            chunk_meta: SnapshotMeta::EMPTY,
            kept: SnapshotMeta::EMPTY,
            durable_index,
            stalled: false,
            pending: heapless::Deque::new(),
            failed: false,
        }
    }

    /// The sequence number of the batch holding the latest write: what an answer that
    /// depends on the writes so far waits for.
    pub fn last_write(&self) -> u64 {
        self.emitted + self.open.dirty as u64
    }

    fn dirty(&mut self) -> &mut OpenBatch {
        self.open.dirty = true;
        &mut self.open
    }

    pub fn note_hard_state(&mut self) {
        self.dirty().hard_state = true;
    }

    pub fn note_append(&mut self, index: Index) {
        let open = self.dirty();
        open.append_from = Some(open.append_from.map_or(index, |a| a.min(index)));
    }

    /// The log was cut to end before `from`.
    pub fn note_truncation(&mut self, from: Index) {
        let open = self.dirty();
        open.truncate_from = Some(open.truncate_from.map_or(from, |t| t.min(from)));
        self.clip(from);
    }

    /// Every entry went; the log continues after `index`.
    pub fn note_reset(&mut self, index: Index, term: Term) {
        let open = self.dirty();
        open.reset = Some((index, term));
        open.truncate_from = None;
        open.append_from = None;
        self.clip(index + 1);
    }

    pub fn note_snapshot_chunk(&mut self, meta: SnapshotMeta, offset: u64) {
        self.chunk_meta = meta;
        self.dirty().chunk = Some(offset);
    }

    /// Is a received chunk waiting in the open batch (the memory log holds one only)?
    pub fn holds_chunk(&self) -> bool {
        self.open.chunk.is_some()
    }

    pub fn note_snapshot(&mut self, write: KeptSnapshot) {
        let (kind, meta) = match write {
            KeptSnapshot::Installed(meta) => (Kept::Installed, meta),
            KeptSnapshot::Taken(meta) => (Kept::Taken, meta),
        };
        self.kept = meta;
        self.dirty().snapshot = Some(kind);
    }

    pub fn note_compaction(&mut self, through: Index) {
        let open = self.dirty();
        open.compact_through = Some(open.compact_through.map_or(through, |c| c.max(through)));
    }

    fn clip(&mut self, from: Index) {
        let end = from.saturating_sub(1);
        self.durable_index = self.durable_index.min(end);
        for (_, last) in self.pending.iter_mut() {
            *last = (*last).min(end);
        }
    }

    /// Is there a batch to hand out?
    pub fn has_batch(&self) -> bool {
        self.open.dirty && !self.failed
    }

    /// Hands out the open batch, if any, reading what it writes from `log`.
    pub fn take_batch<'a, S: LogStorage>(&'a mut self, log: &'a S) -> Option<Persist<'a>> {
        if self.failed || !self.open.dirty {
            return None;
        }
        self.handed = core::mem::take(&mut self.open);
        self.emitted += 1;
        let last = log.last_index();
        if self.pending.is_full() {
            // Merge with the newest record: the older point becomes durable only with it.
            self.pending.pop_back();
        }
        let _ = self.pending.push_back((self.emitted, last));
        Some(Persist {
            token: SyncToken(self.emitted),
            durability: self,
            log,
        })
    }

    /// The host made the batches through `token` durable.
    pub fn synced(&mut self, token: SyncToken) {
        // A token from the future (a confused host) must not release anything unwritten.
        let through = token.0.min(self.emitted);
        if through <= self.synced {
            return;
        }
        self.synced = through;
        while let Some(&(write, last)) = self.pending.front() {
            if write > through {
                break;
            }
            self.durable_index = last;
            self.pending.pop_front();
        }
    }

    /// May a message gated on `after` leave?
    pub fn released(&self, after: u64) -> bool {
        !self.failed && after <= self.synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::VecLog;
    use crate::types::{Entry, EntryKind};

    fn append(log: &mut VecLog, d: &mut Durability, index: Index, term: Term) {
        log.append(&Entry {
            index,
            term,
            kind: EntryKind::Command,
            data: b"x",
        })
        .unwrap();
        d.note_append(index);
    }

    #[test]
    fn durable_index_follows_synced_batches_and_truncations() {
        let mut log = VecLog::new();
        let mut d = Durability::new(0);
        for i in 1..=5 {
            append(&mut log, &mut d, i, 1);
        }
        let t = d.take_batch(&log).unwrap().token;
        assert_eq!(t, SyncToken(1));
        assert!(d.take_batch(&log).is_none(), "nothing new");
        log.truncate_suffix(4);
        d.note_truncation(4);
        append(&mut log, &mut d, 4, 2);
        append(&mut log, &mut d, 5, 2);
        append(&mut log, &mut d, 6, 2);
        d.synced(t);
        assert_eq!(
            d.durable_index, 3,
            "entries 4..5 were cut before becoming durable"
        );
        assert!(!d.released(2));
        let b = d.take_batch(&log).unwrap();
        assert_eq!(b.batch().truncate_from, Some(4));
        assert_eq!(
            b.batch()
                .entries
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<heapless::Vec<_, 8>>(),
            [(4, 2), (5, 2), (6, 2)]
        );
        let t2 = b.token;
        d.synced(SyncToken(99));
        assert_eq!(
            d.synced, t2.0,
            "a token never releases batches not handed out"
        );
        assert_eq!(d.durable_index, 6);
        assert!(d.released(2));
    }

    #[test]
    fn entries_appended_before_a_truncation_in_one_batch_are_written() {
        let mut log = VecLog::new();
        let mut d = Durability::new(0);
        for i in 1..=5 {
            append(&mut log, &mut d, i, 1);
        }
        log.truncate_suffix(4);
        d.note_truncation(4);
        append(&mut log, &mut d, 4, 2);
        let b = d.take_batch(&log).unwrap();
        assert_eq!(b.batch().truncate_from, Some(4));
        let written: heapless::Vec<_, 8> = b
            .batch()
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        assert_eq!(written, [(1, 1), (2, 1), (3, 1), (4, 2)]);
    }

    #[test]
    fn many_batches_between_syncs_merge_conservatively() {
        let mut log = VecLog::new();
        let mut d = Durability::new(0);
        let mut last = SyncToken(0);
        for i in 1..=20 {
            append(&mut log, &mut d, i, 1);
            last = d.take_batch(&log).unwrap().token;
        }
        d.synced(SyncToken(10));
        assert!(d.durable_index <= 10);
        d.synced(last);
        assert_eq!(d.durable_index, 20);
    }
}
