//! The server binding's durable store: [`FileLog`], a segmented, append-only, checksummed
//! log on disk with the hard state and the kept snapshot beside it. It is the host's side of
//! the core's storage contract (never a [`LogStorage`]: the node keeps
//! its memory of the log in a [`CachedLog`]): it performs the node's
//! [`Output::Persist`](coracle::Output::Persist) batches, fills the memory log at a
//! restart, and reads entries and snapshot chunks back.
//!
//! ```
//! use coracle::{Entries, Entry, EntryKind, HardState, LogStorage, Batch, Persist, SyncToken};
//! use coracle_quic::storage::FileLog;
//!
//! let dir = std::env::temp_dir().join(format!("coracle-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let mut log = FileLog::open(&dir)?;
//! let entries = [Entry { index: 1, term: 1, kind: EntryKind::Command, data: b"x=1" }];
//! // What Output::Persist hands out (here built by hand):
//! log.persist(&Batch {
//!     token: SyncToken(1),
//!     hard_state: Some(HardState { current_term: 1, voted_for: Some(1) }),
//!     snapshot_chunk: None,
//!     snapshot: None,
//!     reset: None,
//!     truncate_from: None,
//!     entries: Entries::from_slice(&entries),
//!     compact_through: None,
//! });
//! log.flush()?; // or begin_flush / FlushJob::run on another thread / end_flush
//! // ... then node.persisted(SyncToken(1))
//! drop(log);
//!
//! let log = FileLog::open(&dir)?;
//! let memory = log.recover(64 << 20)?; // the node's memory log after a restart
//! assert_eq!(memory.entry(1).unwrap().data, b"x=1");
//! assert_eq!(memory.hard_state().voted_for, Some(1));
//! assert_eq!(log.reader().entries(1, 1, 0)?[0].data, b"x=1");
//! # drop(log);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Durability and group commit
//!
//! [`FileLog::persist`] only queues a batch's operations in memory (the records of its
//! entries encoded, the rest as it is): it is called on the node's loop, so no I/O happens
//! inside a node input. A flush performs every operation queued so far, in order, and
//! makes it durable: [`FileLog::begin_flush`] takes them as one [`FlushJob`] (with the
//! files: only one job runs at a time), [`FlushJob::run`] performs them on any thread, and
//! [`FileLog::end_flush`] takes the result back; [`FileLog::flush`] does the three at once.
//! Batches queued while a job runs wait for the next one, so one `fdatasync` covers every
//! batch that arrived during the previous one. The host then calls
//! [`Node::persisted`](coracle::Node::persisted) with the newest token of the job.
//! Dropping a `FileLog` does **not** flush: what was queued is lost, exactly as in a crash,
//! and the node never acknowledged it.
//!
//! # Order
//!
//! A job performs, batch after batch, what the contract lists: the hard state, a snapshot
//! chunk, the kept snapshot, a reset, a truncation, the records, and compaction, with two
//! liberties that keep every crash safe:
//!
//! - The newest hard state of the job is written first (atomic replacement, durable at
//!   once), before the records of earlier batches. A crash between leaves a newer term or
//!   vote with an older log, which is the state of a node that lost some unacknowledged
//!   appends: safe. (The other order could leave entries of a term newer than the durable
//!   `currentTerm`.)
//! - The records of all the job's batches go to the active segment with one write and one
//!   `fdatasync` at the end (a roll-over writes and syncs what the old segment holds first).
//!   Compaction comes after that `fdatasync`: it is not part of any batch's durability.
//!
//! There is no per-write metadata flush: records are written with `fdatasync`; the directory
//! is fsynced only when a file is created, renamed or removed (new segment, compaction, hard
//! state, snapshot).
//!
//! # Preallocation
//!
//! With [`Options::preallocate`] (the default), segments are preallocated: the next
//! roll-over makes a spare file the new segment ([`segment`]), and records overwrite what
//! it holds instead of growing a file, so the `fdatasync` of a group has no file size to
//! update, which makes it about a third faster on this project's machines. The spare is a
//! segment that compaction dropped, renamed rather than deleted (**recycled**: nothing to
//! write), or else a segment's worth of zeros that a thread writes and fsyncs once the
//! active segment holds enough to want one (1 MiB, or half a segment if segments are
//! smaller, if the active segment is not preallocated; three quarters of it if it is, so a
//! log that compacts as it goes recycles and never writes zeros). A segment that is not
//! preallocated (the first one, or one created while no spare was ready) is rolled over as
//! soon as a spare is ready, so a busy log soon writes into preallocated space; an idle one
//! never pays for a spare. Preparing the spare never blocks the log: without one, a
//! roll-over creates a plain segment, and a spare that cannot be written (a full disk) is
//! only skipped. The spare and the rest of the active segment take disk space that
//! [`Options::max_log_bytes`] does not count (up to two segments' worth).
//!
//! # Truncation and crashes
//!
//! A truncation must never let the cut entries come back, neither alone nor, worse, mixed
//! with the new entries written after them (an old entry of term 2 durable after a new one
//! of term 3 would break Log Matching). The argument:
//!
//! 1. Records reach a file only in a job, which writes the records it holds with one write
//!    and `fdatasync`s them before it ends (and a roll-over syncs the old segment before the
//!    new one exists). So the records on disk are always a prefix of the log, durable except
//!    perhaps for the tail of the last segment during a job, and a queued record is never on
//!    disk.
//! 2. If every cut entry is still pending in the job (queued after the last write), the cut
//!    drops them from the buffer: nothing on disk changes, and no new record can land after
//!    them because they never land.
//! 3. Otherwise the job, before it performs the next operation, lowers the durability marks
//!    (durably), deletes the segments after the one holding `from` (newest first, then
//!    fsyncs the directory), truncates the segment holding `from` at that entry's record
//!    and fsyncs the file. Only then are the batch's new records buffered, and they are
//!    written after the cut. A crash during the cut leaves a prefix of the old log that is
//!    at least `from - 1` long (files are removed from the end, then the last one
//!    shortened), and a crash after it leaves the cut log: the cut entries never reappear
//!    once the cut was performed, and never after a new entry.
//! 4. Losing the cut (a crash before the job) or the cut entries early is safe: entries in
//!    conflict with a leader are not committed (the leader has every committed entry,
//!    Leader Completeness), and the node acknowledges nothing of the message before its
//!    batch is durable.
//!
//! The cost is one fsync (plus one of the directory if segments go) in the job that
//! truncates durable entries; that happens only when a new leader overwrites an
//! uncommitted suffix, which is rare.
//!
//! # Compaction
//!
//! A batch's `compact_through` forgets `first..=through` (where the entries are, in
//! memory) and deletes every segment whose entries are all `<= through` (oldest first, then
//! fsyncs the directory); the segment still holding live entries, and always the active
//! one, stay. The node compacts only through an index its kept snapshot covers: on open the
//! log starts at the first remaining segment, then the kept snapshot moves the start up to
//! its index, less [`Options::keep_behind_snapshot`] (entries the snapshot covers are
//! forgotten again).
//!
//! # Snapshots
//!
//! One snapshot is kept, in the file `snapshot` ([format version 2](snapshot): index,
//! term, size, the membership configuration in force at the index, the state machine's
//! bytes, and a CRC-32 over all of it). Its bytes are never held in memory: they are
//! written and read a piece at a time. It gets there two ways, both atomic:
//!
//! - The host snapshots its own state machine: a [`SnapshotWriter`]
//!   ([`FileLog::snapshot_writer`], with the metadata the node will give it) takes the bytes
//!   in pieces, on any thread, into `snapshot.saving-<index>.tmp`;
//!   [`FileLog::finish_snapshot`] writes the size and the checksum and fsyncs it. Then the
//!   host calls [`Node::snapshot_taken`](coracle::Node::snapshot_taken), whose batch says
//!   [`SnapshotWrite::Taken`]: the job renames the file over `snapshot` and fsyncs the
//!   directory (after rewriting it with the node's metadata, should the host's guess
//!   differ), then compacts behind it with the batch's `compact_through`.
//! - A leader sends it: the batches' snapshot chunks go to `snapshot.incoming.tmp`, the
//!   header when offset 0 arrives, each chunk at its offset (a chunk sent again overwrites,
//!   so a transfer resumes at any offset up to what was received). Nothing of it is fsynced
//!   and it is not part of the durable state: open removes it. With
//!   [`SnapshotWrite::Installed`] the job (1) writes the size, reads the data back to
//!   append the checksum and fsyncs the file; (2) renames it over `snapshot` and fsyncs the
//!   directory; then the same batch's (3) reset (the log did not hold the snapshot's last
//!   entry: the segments after `index + 1` are deleted, newest first, an empty segment
//!   starting at `index + 1` is created, replacing one of that name, then the older
//!   segments are deleted, so a segment is on disk at every step) or compaction (it did:
//!   the entries after it stay) restarts the log after it. All of this is durable before
//!   the node is told the batch is.
//!
//! Crash safety: the durable state is "the `snapshot` file, and the segments interpreted
//! relative to it". On open the snapshot is the compaction point: if the segments hold the
//! snapshot's last entry, entries up to it are forgotten (and whole segments of them
//! deleted); if they do not, the log is discarded and restarts after the snapshot (§7).
//! So step (3) is exactly what open does, and a crash anywhere in the install leaves:
//!
//! - before the rename is durable: the old `snapshot` file (whole) and the old segments
//!   (the temporary file is removed): the old state;
//! - after it: the new `snapshot` file (whole: it was fsynced before the rename) and some
//!   prefix of the old segments, or the new empty segment after some old ones (which
//!   recovery removes as superseded: see [`recovery`]); open applies the new snapshot to
//!   them, giving the same log as a completed install: the new state.
//!
//! The rename is the commit point; a mix of an old snapshot with a new log, or a half
//! written snapshot, cannot be read. The tests stop an install at each step and reopen.
//! Chunks for a follower ([`Output::SendSnapshot`](coracle::Output::SendSnapshot)) and a
//! restore of the state machine read the `snapshot` file ([`LogReader::snapshot`],
//! [`SnapshotFile`]); a file replaced meanwhile is told by its index.
//!
//! Format version 1 snapshot files (no configuration) are refused on open with
//! [`FileLogError::SnapshotVersion`], a message that says what to do: a configuration
//! cannot be made up safely.
//!
//! # Memory
//!
//! The store never holds the entries' data nor the snapshot's bytes: it keeps where each
//! entry is (the 8-byte offset of its record; the segment follows from the index), the
//! terms as runs of one term, and the indexes of membership entries. Reads go to the
//! segment files: [`FileLog::recover`] fills the node's memory log with the terms of every
//! entry, every membership entry and the data of the newest entries up to a budget; the
//! rest is read back when the node asks ([`LogReader::entries`], on the node's read thread).
//! A reopen reads each segment once, one at a time. Total disk use can be bounded with
//! [`Options::max_log_bytes`].
//!
//! # On-disk format
//!
//! | file | what |
//! |---|---|
//! | `LOCK` | empty; holds the exclusive lock of an open `FileLog` |
//! | `format` | the directory's format version ([`format`](mod@format); none in format 1, the previous release's) |
//! | `identity` | cluster, node and incarnation of the directory ([`identity`]); written once (again only by [`FileLog::force_new_cluster`]) |
//! | `00000000000000000001.seg` | a [`segment`] (format version 3, versions 2 and 1 still read): header, durability marks, then records ([`record`]) |
//! | `hard_state` | term and vote ([`hard_state`]) |
//! | `snapshot` | the latest snapshot ([`snapshot`], its own format version 2) |
//! | `incarnations` | the incarnation of each member the node talked to ([`incarnations`]; the node runtime's, not the log's) |
//! | `snapshot.incoming.tmp` | a snapshot being received from a leader; removed on open |
//! | `snapshot.saving-<index>.tmp` | the host's own snapshot at `index`, until a batch keeps it; removed on open |
//! | `*.tmp` | a file being written before its rename; removed on open |
//!
//! Integers are little-endian; checksums are CRC-32 (IEEE) computed with `crc32fast`.
//! Every file format starts with an 8-byte magic and the format version.
//!
//! # Recovery
//!
//! See [`recovery`]: a torn tail of the last segment is cut off; damage anywhere else
//! refuses to open with [`FileLogError::Corrupt`], naming the file, the offset and the
//! entries concerned. What open removes or cuts is reported with the entries it concerns
//! ([`RecoveryReport::warnings`]): a torn tail (the entries of the write a crash
//! interrupted, never durable), leftover temporary files (what each was), segments a
//! snapshot superseded, a log discarded for a snapshot.
//!
//! # Incomplete durable state
//!
//! A node that forgets its vote, or entries it acknowledged, can break Raft's guarantees
//! (vote twice in a term; help elect a leader without a committed entry). Open therefore
//! refuses, with [`FileLogError::Damaged`], a directory whose durable state is incomplete
//! ([`Damage`] says what, the message how to repair):
//!
//! - its identity says it was initialised, but the hard state or every segment is gone;
//!   without an identity (a directory from before identities), entries or a snapshot
//!   without a hard state;
//! - the last segment ends before its durability mark (a file cut short, a disk that lost
//!   writes), or is sealed while no segment follows (later segments deleted): the range of
//!   entries lost is named;
//! - it is another node's or cluster's directory ([`Options::member`]).
//!
//! [`FileLog::check_complete`] adds what a host that rebuilds its state machine from the
//! snapshot and the log needs: no gap between them, a hard state no older than the log.
//! An empty directory is a new node; that it must not rejoin as the voter it replaces is
//! for its peers to tell ([`crate::hello`]).
//!
//! Known limit: if the machine dies *inside* `sync` and the file system persisted a later
//! page of that last write but not an earlier one, the hole is followed by valid records
//! and recovery refuses to open (an error, never a silent loss, although in that case
//! nothing acknowledged was lost). The same holds if an entry's data happens to contain a
//! whole valid record right after a torn one. A directory restored from an older copy of
//! itself (hard state, log and marks all older together) cannot be told from the real
//! one, here or by the peers (same incarnation).

mod dir;
mod error;
pub mod format;
pub mod hard_state;
pub mod identity;
pub mod incarnations;
pub mod new_cluster;
mod positions;
pub mod record;
pub mod recovery;
mod seed;
pub mod segment;
pub mod snapshot;

#[cfg(test)]
mod tests;

pub use error::{Damage, FileLogError};
pub use identity::DirIdentity;
pub use incarnations::{Incarnations, Verdict};
pub use new_cluster::{NewCluster, NewClusterError};
pub use recovery::{Leftover, Superseded, TailCut};
pub use snapshot::{Snapshot, SnapshotFile, Writer as SnapshotWriter};

use coracle::{
    Batch, CachedLog, EntryKind, HardState, Index, LogStorage, OwnedEntry, SnapshotMeta,
    SnapshotWrite, Term,
};
use error::io_err;
use positions::Positions;
use segment::Segment;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Settings of a [`FileLog`].
///
/// ```
/// use coracle_quic::storage::Options;
/// let options = Options::new().segment_bytes(8 << 20).max_log_bytes(Some(1 << 30));
/// # let _ = options;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    segment_bytes: u64,
    max_entry_bytes: usize,
    max_log_bytes: Option<u64>,
    preallocate: bool,
    keep_behind_snapshot: u64,
    member: Option<(u64, coracle::NodeId)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            max_entry_bytes: 16 << 20,
            max_log_bytes: None,
            preallocate: true,
            keep_behind_snapshot: 0,
            member: None,
        }
    }
}

impl Options {
    /// The defaults: 64 MiB segments, preallocated; entries up to 16 MiB; no quota; no
    /// entry kept behind the snapshot on open.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new segment starts once the active one holds this many bytes (at least one
    /// record per segment, whatever the value).
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// The largest entry data accepted (a batch with a larger entry fails the log with
    /// [`FileLogError::EntryTooLarge`]: the node's `max_entry_bytes` must be smaller).
    /// Recovery treats a record claiming more as damage, so reopen with a limit at least as
    /// large.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = bytes.min(u32::MAX as usize - record::ENTRY_HEADER);
        self
    }

    /// A quota on the bytes of all segments, which the host keeps: it asks
    /// [`FileLog::check_room`] before it proposes a command, and one past it
    /// ([`FileLogError::QuotaExceeded`]) is refused (back-pressure) while a snapshot and
    /// compaction make room. A leader's log sets the pace of its followers', so theirs stay
    /// under it too (a batch from the node is always performed: a follower cannot refuse
    /// what its leader committed). Use it to keep a log from filling the disk, where the
    /// failure would be an I/O error that stops the node.
    ///
    /// The last sixteenth of the quota (at most 64 KiB) takes only no-op and membership
    /// entries: a log full of commands must still let a new leader commit its no-op,
    /// or after a restart no entry could be committed, so none applied, snapshotted and
    /// compacted, and the log would stay full for good.
    ///
    /// The quota must be at least [`min_log_bytes`](Self::min_log_bytes):
    /// [`FileLog::open_with`] refuses a smaller one ([`FileLogError::QuotaTooSmall`]).
    pub fn max_log_bytes(mut self, bytes: Option<u64>) -> Self {
        self.max_log_bytes = bytes;
        self
    }

    /// Whether segments are preallocated: recycled from compacted ones, or else written
    /// with zeros by a helper thread (see "Preallocation" in the [module docs](self)). On
    /// by default.
    pub fn preallocate(mut self, on: bool) -> Self {
        self.preallocate = on;
        self
    }

    /// Entries behind the snapshot that [`FileLog::open_with`] keeps, of those the segments
    /// still hold: a host that compacts `n` entries behind each snapshot (so a follower a
    /// little behind gets entries, not the whole snapshot) gives `n`, and a restart leaves
    /// the log as compaction did. 0 by default: the log starts right after the snapshot.
    pub fn keep_behind_snapshot(mut self, entries: u64) -> Self {
        self.keep_behind_snapshot = entries;
        self
    }

    /// The node this log belongs to: written into the directory's identity when it is
    /// initialised, and checked on every later open (another node's or cluster's directory
    /// is refused with [`Damage::WrongIdentity`]). Without it nothing is checked, and a new
    /// directory's identity says cluster 0, node 0.
    pub fn member(mut self, cluster: u64, node: coracle::NodeId) -> Self {
        self.member = Some((cluster, node));
        self
    }

    /// The bytes of the quota only no-op and membership entries may use.
    fn reserved(limit: u64) -> u64 {
        (limit / 16).min(64 << 10)
    }

    /// The most bytes one segment can take: a segment ends once it holds
    /// [`segment_bytes`](Self::segment_bytes), so the record that crosses the line can be
    /// a largest entry's.
    fn largest_segment(&self) -> u64 {
        let largest_record = record::entry_record_len(self.max_entry_bytes) as u64;
        self.segment_bytes
            .saturating_add(largest_record)
            .saturating_add(segment::HEADER as u64)
    }

    /// The smallest quota ([`max_log_bytes`](Self::max_log_bytes)) a log with these
    /// segments and entries can live with: three of its largest segments, and at least
    /// [`MIN_LOG_BYTES`].
    ///
    /// Why: compaction frees whole segments and never the one being written, which can
    /// hold up to a largest segment. After a snapshot and compaction of everything
    /// applied, that segment, one more largest entry (with the header of the next
    /// segment) and the reserve for no-ops must fit in the quota, or every append of a
    /// command fails for good (with 64 MiB segments and an 8 MiB quota, the first segment
    /// never ended, so nothing could ever be deleted). Three segments leave room for at
    /// least one segment of new entries per compaction, whatever the sizes.
    pub fn min_log_bytes(&self) -> u64 {
        self.largest_segment().saturating_mul(3).max(MIN_LOG_BYTES)
    }

    /// The largest [`segment_bytes`](Self::segment_bytes) that works with a quota of
    /// `limit` bytes and these entries, if any does.
    pub fn max_segment_bytes_for(&self, limit: u64) -> Option<u64> {
        let fixed = self.largest_segment() - self.segment_bytes;
        if limit < MIN_LOG_BYTES {
            return None;
        }
        (limit / 3).checked_sub(fixed).filter(|&s| s > 0)
    }

    /// Checks that the options can work together: a quota, if any, of at least
    /// [`min_log_bytes`](Self::min_log_bytes). [`FileLog::open_with`] calls it.
    pub fn check(&self) -> Result<(), FileLogError> {
        match self.max_log_bytes {
            Some(limit) if limit < self.min_log_bytes() => Err(FileLogError::QuotaTooSmall {
                limit,
                least: self.min_log_bytes(),
                segment_bytes: self.segment_bytes,
                max_entry_bytes: self.max_entry_bytes,
                largest_segment_bytes: self.max_segment_bytes_for(limit),
            }),
            _ => Ok(()),
        }
    }

    /// Bytes the active segment holds before a spare of zeros is prepared: soon if it is
    /// not preallocated (to end it early), late if it is (so compaction has a chance to
    /// hand over a segment to recycle first).
    fn spare_after(&self, active_preallocated: bool) -> u64 {
        if active_preallocated {
            self.segment_bytes / 4 * 3
        } else {
            (1 << 20).min(self.segment_bytes / 2)
        }
    }
}

/// The smallest quota ([`Options::max_log_bytes`]) accepted whatever the segments: its
/// reserve for no-ops and configuration entries (a sixteenth) is then at least 1 KiB, room
/// for a few of them and the header of a new segment.
pub const MIN_LOG_BYTES: u64 = 16 << 10;

/// Bytes of its write buffer a flush keeps for the next one (a burst's larger buffer is
/// given back).
const PENDING_KEPT: usize = 4 << 20;

/// Counters of the I/O a [`FileLog`] did since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `fsync`/`fdatasync` calls on files and directories, all causes together.
    pub fsyncs: u64,
    /// Flush jobs performed.
    pub syncs: u64,
    /// Bytes of records written to segments.
    pub bytes_written: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments deleted (compaction, truncation, discard by a snapshot).
    pub segments_deleted: u64,
    /// Segments created from a preallocated spare (counted in `segments_created` too).
    pub segments_preallocated: u64,
    /// Of those, segments made from a compacted one (counted in `segments_deleted` when
    /// compaction dropped it).
    pub segments_recycled: u64,
    /// Spares that could not be prepared (say, the disk is full); the log went on without.
    pub spares_failed: u64,
    /// Compactions whose segments could not all be deleted (the next one tries again).
    pub compactions_failed: u64,
}

/// What [`FileLog::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// A torn tail cut off the last segment.
    pub tail_cut: Option<TailCut>,
    /// Temporary files of interrupted atomic writes, removed.
    pub leftovers_removed: Vec<PathBuf>,
    /// The same, with what each was.
    pub leftovers: Vec<Leftover>,
    /// The log did not hold the snapshot's last entry and was discarded (§7).
    pub discarded_by_snapshot: bool,
    /// The entries discarded then (first and last index), if there were any.
    pub discarded: Option<(Index, Index)>,
    /// Segments left by an interrupted discard, removed.
    pub superseded: Option<Superseded>,
    /// The directory was new: its identity, hard state and first segment were written.
    pub initialised: bool,
    /// The directory was written before identities existed and was given one.
    pub adopted: bool,
    /// The directory was of this older [`format`](mod@format) and was upgraded in place to
    /// [`format::CURRENT`] (not set for a new directory).
    pub upgraded_from: Option<u32>,
    /// Segments read.
    pub segments: usize,
    /// Entries read (before the snapshot's compaction).
    pub entries: usize,
}

impl RecoveryReport {
    /// One line for each thing recovery dropped or repaired, saying which entries it
    /// concerned (for the host's log, at WARN: each is the trace of a crash or of damage).
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.leftovers.iter().map(ToString::to_string).collect();
        if let Some(from) = self.upgraded_from {
            out.push(format!(
                "upgraded the data directory from format {from} to format {} (a build older than this one cannot open it any more)",
                format::CURRENT
            ));
        }
        if let Some(t) = &self.tail_cut {
            out.push(t.to_string());
        }
        if let Some(s) = &self.superseded {
            out.push(s.to_string());
        }
        if self.discarded_by_snapshot {
            out.push(match self.discarded {
                Some((a, b)) => format!(
                    "discarded the log, entries {a}..={b} ({} entries): it does not hold the snapshot's last entry, so the snapshot replaces it \
                     (the entries up to the snapshot's index are in it; later ones conflicted with it and were never committed)",
                    b + 1 - a
                ),
                None => "the log restarts after the snapshot (it held no entry)".into(),
            });
        }
        out
    }
}

/// The host's durable store on disk: segments of checksummed records in a directory, the
/// hard state and the kept snapshot beside them. It performs the node's
/// [`coracle::Batch`]es ([`persist`](Self::persist), then a flush), fills the node's memory
/// log at a restart ([`recover`](Self::recover)), and reads entries and snapshot chunks
/// back ([`reader`](Self::reader)). It never holds the entries' data nor the snapshot's
/// bytes: see the [module docs](self) for the guarantees and the format.
pub struct FileLog {
    dir: PathBuf,
    options: Options,
    identity: DirIdentity,
    recovery: RecoveryReport,
    /// Operations of the batches given to [`persist`](Self::persist) and not yet handed to
    /// a flush.
    queue: Queue,
    /// The queue of the last job, emptied and handed back: the next one to fill, so its
    /// buffers are not grown again from nothing for every flush.
    spent: Queue,
    /// The files; away (on the fsync thread) while a [`FlushJob`] runs.
    disk: Option<Box<Disk>>,
    /// The index and record length of each entry the running job appends: in neither the
    /// queue nor (until the job writes them) the positions ([`bytes_after`](Self::bytes_after)).
    flushing: Vec<(Index, u64)>,
    /// Their bytes: in neither the queue nor (until the job is taken back) the summary's
    /// count ([`disk_bytes`](Self::disk_bytes)).
    flushing_bytes: u64,
    /// Where each entry is, shared with the readers.
    positions: Arc<RwLock<Positions>>,
    /// What the disk said when it was last here.
    summary: Summary,
    failed: bool,
    last_error: Option<FileLogError>,
}

/// What the front keeps of the disk's state while a flush has it.
#[derive(Clone, Copy, Debug, Default)]
struct Summary {
    stats: Stats,
    disk_bytes: u64,
    /// Bytes of the active segment.
    active_bytes: u64,
    snapshot: Option<Snapshot>,
    hard_state: HardState,
}

/// Queued operations, in the order of the batches and, in each, of the contract.
#[derive(Debug, Default)]
struct Queue {
    /// The newest hard state queued (written first: see "Order" in the module docs).
    hard_state: Option<HardState>,
    ops: Vec<Op>,
    /// The records of the entries appended, back to back.
    records: Vec<u8>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.ops.is_empty()
    }

    /// Empties it for the next job, keeping its buffers (up to what a burst may leave:
    /// memory follows the configuration).
    fn clear(&mut self) {
        self.hard_state = None;
        self.ops.clear();
        self.ops.shrink_to(OPS_KEPT);
        self.records.clear();
        self.records.shrink_to(RECORDS_KEPT);
    }
}

/// Operations a spent queue keeps room for.
const OPS_KEPT: usize = 1 << 12;
/// Bytes of records a spent queue keeps room for.
const RECORDS_KEPT: usize = 256 << 10;

/// One operation of a batch (the snapshot metadata, large and rare, boxed: one `Append` per
/// entry is what the queue mostly holds).
#[derive(Debug)]
enum Op {
    /// Bytes of a snapshot being received.
    Chunk {
        meta: Box<SnapshotMeta>,
        offset: u64,
        data: Vec<u8>,
    },
    /// The snapshot received is the kept one.
    Installed(Box<SnapshotMeta>),
    /// The host's own snapshot at `meta.index` is the kept one.
    Taken(Box<SnapshotMeta>),
    /// Every entry goes; the log continues after (index, term).
    Reset(Index, Term),
    /// Entries from this index on go.
    Truncate(Index),
    /// An entry: its record is `records[range]` of the queue.
    Append {
        index: Index,
        term: Term,
        kind: EntryKind,
        range: std::ops::Range<usize>,
    },
    /// Entries through this index may go.
    Compact(Index),
}

/// The queued operations of one or more batches, with the files they are performed on: run
/// it on any thread ([`run`](Self::run)), one at a time, and hand the result back to
/// [`FileLog::end_flush`]. One `fdatasync` of the records for the whole job (group commit).
#[derive(Debug)]
pub struct FlushJob {
    disk: Box<Disk>,
    queue: Queue,
}

/// What a [`FlushJob`] did, for [`FileLog::end_flush`].
#[derive(Debug)]
pub struct FlushDone {
    disk: Box<Disk>,
    /// The job's queue, emptied.
    spent: Queue,
    result: Result<(), FileLogError>,
}

impl FlushJob {
    /// Performs the operations in order and makes them durable (blocks for the writes and
    /// the `fdatasync`s).
    pub fn run(mut self) -> FlushDone {
        let result = self.disk.perform(&mut self.queue);
        self.queue.clear();
        FlushDone {
            disk: self.disk,
            spent: self.queue,
            result,
        }
    }
}

/// Reads entries and snapshot chunks back from a [`FileLog`]'s files, on any thread
/// (`Send + Clone`): for [`Output::Fetch`](coracle::Output::Fetch) and
/// [`Output::SendSnapshot`](coracle::Output::SendSnapshot). Reads hold the log's positions
/// for their duration, so a truncation or compaction waits for a read in progress and never
/// cuts a file under it.
#[derive(Clone, Debug)]
pub struct LogReader {
    dir: PathBuf,
    positions: Arc<RwLock<Positions>>,
    max_payload: usize,
}

impl LogReader {
    /// The entries `from..=to` (a prefix: it stops once `max_bytes` of data are read,
    /// after at least one entry, or at the first entry the log does not hold).
    pub fn entries(
        &self,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<OwnedEntry>, FileLogError> {
        let positions = self.positions.read().map_err(|_| FileLogError::Failed)?;
        self.entries_locked(&positions, from, to, max_bytes)
    }

    /// [`entries`](Self::entries) with the positions already held.
    fn entries_locked(
        &self,
        positions: &Positions,
        from: Index,
        to: Index,
        max_bytes: usize,
    ) -> Result<Vec<OwnedEntry>, FileLogError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut open: Option<(usize, File)> = None;
        for index in from..=to.min(positions.last_index()) {
            let Some(offset) = positions.offset(index) else {
                break;
            };
            let seg = positions.segment_of(index);
            let path = &positions.segments[seg].1;
            if open.as_ref().is_none_or(|(s, _)| *s != seg) {
                let file = File::open(path).map_err(io_err(path, "open segment for reading"))?;
                open = Some((seg, file));
            }
            let Some((_, file)) = &open else { break };
            let entry = read_record(file, path, offset, self.max_payload)?;
            if entry.index != index {
                return Err(FileLogError::corrupt(
                    path,
                    offset,
                    format!("entry has index {} where {index} was expected", entry.index),
                ));
            }
            bytes += entry.data.len();
            out.push(entry);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// The kept snapshot, if it is the one at `index`, open for reading.
    pub fn snapshot(&self, index: Index) -> Result<Option<SnapshotFile>, FileLogError> {
        SnapshotFile::open(&self.dir, index)
    }
}

/// Reads and checks the record of one entry at `offset` of a segment.
fn read_record(
    file: &File,
    path: &Path,
    offset: u64,
    max_payload: usize,
) -> Result<OwnedEntry, FileLogError> {
    let mut head = [0u8; record::FRAME_HEADER];
    file.read_exact_at(&mut head, offset)
        .map_err(io_err(path, "read segment"))?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > max_payload {
        return Err(FileLogError::corrupt(
            path,
            offset,
            "record length exceeds the limit",
        ));
    }
    let mut frame = vec![0u8; record::FRAME_HEADER + len];
    frame[..record::FRAME_HEADER].copy_from_slice(&head);
    file.read_exact_at(
        &mut frame[record::FRAME_HEADER..],
        offset + record::FRAME_HEADER as u64,
    )
    .map_err(io_err(path, "read segment"))?;
    let (payload, _) = record::read_frame(&frame, 0, max_payload)
        .map_err(|reason| FileLogError::corrupt(path, offset, reason))?;
    record::decode_entry(payload).map_err(|reason| FileLogError::corrupt(path, offset, reason))
}

/// The files of a [`FileLog`] and what performing operations on them needs. It moves to
/// the thread that runs a [`FlushJob`] and back.
struct Disk {
    dir: PathBuf,
    options: Options,
    hard_state: HardState,
    /// In order; never empty; the last is the active one.
    segments: Vec<Segment>,
    /// Handle of the last segment.
    active: File,
    /// Records for the active segment, after `segments.last().len`, not yet written.
    pending: Vec<u8>,
    positions: Arc<RwLock<Positions>>,
    /// The kept snapshot (its bytes stay in the file).
    snapshot: Option<Snapshot>,
    /// A snapshot being received from a leader.
    incoming: Option<snapshot::Incoming>,
    /// The next segment, preallocated.
    spare: Spare,
    /// Test only: the step of a snapshot install at which to stop, as a crash would.
    #[cfg(test)]
    crash_at: Option<&'static str>,
    stats: Stats,
    /// Every entry up to this index is durable (what the next durability mark says).
    durable: Index,
    /// The directory's lock, held by whoever holds the files: a flush job that outlives
    /// its log (a shutdown gave up on a disk that hangs) keeps the directory from being
    /// opened again until it is done with it. Last, so it is released after the files.
    _lock: File,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("pending_bytes", &self.pending.len())
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

/// Where the preallocated next segment is.
#[derive(Debug, Default)]
enum Spare {
    /// None yet (the active segment is not full enough to want one).
    #[default]
    None,
    /// A thread is writing it.
    Preparing {
        done: std::sync::mpsc::Receiver<Result<Option<segment::Spare>, FileLogError>>,
        cancel: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<()>,
    },
    /// Written and fsynced, or a recycled segment.
    Ready(segment::Spare),
    /// It could not be written; tried again for the next segment.
    Failed,
}

impl FileLog {
    /// Opens (creating it if needed) the log in `dir` with the default [`Options`].
    pub fn open(dir: impl AsRef<Path>) -> Result<FileLog, FileLogError> {
        Self::open_with(dir, Options::default())
    }

    /// Opens (creating it if needed) the log in `dir`: takes the directory lock, removes
    /// leftover temporary files, reads the hard state, checks the snapshot and reads where
    /// every entry of every segment is (not their data), cuts a torn tail, and compacts the
    /// log through the snapshot (less [`Options::keep_behind_snapshot`] entries).
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<FileLog, FileLogError> {
        options.check()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir, "create data directory"))?;
        let lock = dir::lock(&dir)?;
        // Before anything is read or changed: a newer build's directory is refused as it is.
        let format = format::read(&dir)?;
        let leftovers = dir::remove_leftovers(&dir, |path| Leftover {
            path: path.to_path_buf(),
            what: recovery::describe_leftover(path),
        })?;
        let mut report = RecoveryReport {
            leftovers_removed: leftovers.iter().map(|l| l.path.clone()).collect(),
            leftovers,
            ..RecoveryReport::default()
        };
        let damaged = |damage| FileLogError::Damaged {
            dir: dir.clone(),
            damage,
        };
        let identity = identity::read(&dir)?;
        if let (Some(found), Some((cluster, node))) = (identity, options.member) {
            if (found.cluster, found.node) != (cluster, node) {
                return Err(damaged(Damage::WrongIdentity {
                    found,
                    cluster,
                    node,
                }));
            }
        }
        let hard_state = hard_state::read(&dir)?;
        let snapshot = snapshot::read(&dir)?;
        let point = snapshot.as_ref().map(|s| (s.meta.index, s.meta.term));
        let replayed =
            recovery::replay(&dir, options.max_entry_bytes + record::ENTRY_HEADER, point)?;
        let read = &replayed.positions;
        let newest_term = read
            .term(read.last_index())
            .filter(|_| read.len() > 0)
            .into_iter()
            .chain(point.map(|(_, t)| t))
            .max()
            .unwrap_or(0);
        // A new directory, or one whose initialisation a crash interrupted (the hard state
        // of a new node, term 0 and no vote, and perhaps the first segment, empty, but no
        // identity yet): nothing in it a node ever acknowledged.
        let fresh = identity.is_none()
            && hard_state.is_none_or(|hs| hs == HardState::default())
            && snapshot.is_none()
            && read.len() == 0;
        // Incomplete durable state: a directory that had a hard state or segments (it has
        // an identity, or entries, or a snapshot) and lost them.
        let had_state = identity.is_some() || newest_term > 0 || snapshot.is_some();
        if hard_state.is_none() && had_state {
            return Err(damaged(Damage::MissingHardState { newest_term }));
        }
        if replayed.segments.is_empty() && !fresh {
            return Err(damaged(Damage::NoSegments {
                snapshot: point.map(|(i, _)| i),
            }));
        }
        // Entries once durable and now gone, unless the snapshot covers them or replaces
        // the log anyway.
        let first = replayed.segments.first().map_or(1, |s| s.base);
        let last_index = first - 1 + read.len() as u64;
        let replaced = point.is_some_and(|(i, t)| read.term(i) != Some(t) && i + 1 >= first);
        if let (Some(last), false) = (replayed.segments.last(), replaced) {
            let covered = point.map_or(0, |(i, _)| i);
            if let Some(mark) = last.mark {
                if mark.sealed {
                    return Err(damaged(Damage::MissingSegments {
                        file: last.path.clone(),
                        from: last_index + 1,
                    }));
                }
                let from = (last_index + 1).max(covered + 1);
                if mark.durable >= from {
                    return Err(damaged(Damage::LostEntries {
                        file: last.path.clone(),
                        from,
                        to: mark.durable,
                    }));
                }
                if mark.allocated > 0 {
                    let len = fs::metadata(&last.path)
                        .map_err(io_err(&last.path, "read the size of a segment"))?
                        .len();
                    if len < mark.allocated {
                        return Err(damaged(Damage::CutShort {
                            file: last.path.clone(),
                            len,
                            allocated: mark.allocated,
                            from,
                        }));
                    }
                }
            }
        }
        let mut stats = Stats::default();
        let mut segments = replayed.segments;
        // The directory is consistent: repair what a crash left, then make it whole.
        if let Some(tail) = &replayed.tail {
            // The mark stops saying an allocated size before the file gets shorter.
            if let Some(last) = segments.last_mut() {
                if let Some(m) = last.mark.filter(|m| m.allocated > 0) {
                    let file = segment::open_for_write(last)?;
                    segment::write_mark(&file, last, m.durable, m.sealed, 0)?;
                    file.sync_data()
                        .map_err(io_err(&last.path, "sync the mark of a segment to cut"))?;
                    stats.fsyncs += 1;
                }
            }
            recovery::cut(tail)?;
            stats.fsyncs += 1;
        }
        if let Some(superseded) = &replayed.superseded {
            for f in &superseded.files {
                fs::remove_file(f).map_err(io_err(f, "remove superseded segment"))?;
            }
            dir::sync_dir(&dir)?;
            stats.fsyncs += 1;
        }
        report.tail_cut = replayed.tail;
        report.superseded = replayed.superseded;
        report.segments = segments.len();
        report.entries = replayed.positions.len();
        let hard_state = match hard_state {
            Some(hs) => hs,
            None => {
                hard_state::write(&dir, HardState::default())?;
                stats.fsyncs += 2;
                HardState::default()
            }
        };
        let mut positions = replayed.positions;
        let active = match segments.last() {
            Some(last) => segment::open_for_write(last)?,
            None => {
                let (base, prev_term) = point.map_or((1, 0), |(i, t)| (i + 1, t));
                let (seg, file) = segment::create(&dir, base, prev_term, None)?;
                stats.fsyncs += 2;
                stats.segments_created += 1;
                positions = Positions::empty_after(base - 1, prev_term);
                segments.push(seg);
                file
            }
        };
        positions.segments = segments.iter().map(|s| (s.base, s.path.clone())).collect();
        // What was read is durable from now on (a crash of the process may have left
        // written records unsynced): the next mark may say so.
        active
            .sync_data()
            .map_err(io_err(&dir, "sync the last segment"))?;
        stats.fsyncs += 1;
        // Consistent, but written by a release whose entries this build cannot read.
        if format < format::OLDEST && !fresh {
            return Err(FileLogError::FormatTooOld {
                dir: dir.clone(),
                found: format,
                oldest: format::OLDEST,
            });
        }
        if format < format::CURRENT {
            // The directory is consistent (every check above passed): upgrade it in place.
            format::write_current(&dir)?;
            stats.fsyncs += 2;
            report.upgraded_from = (!fresh).then_some(format);
        }
        let identity = match identity {
            Some(id) => id,
            None => {
                // The last step of initialising (or adopting) a directory: from now on a
                // missing file is damage.
                let (cluster, node) = options.member.unwrap_or((0, 0));
                let id = DirIdentity::new(cluster, node);
                identity::write(&dir, &id)?;
                stats.fsyncs += 2;
                report.initialised = fresh;
                report.adopted = !fresh;
                id
            }
        };
        let positions = Arc::new(RwLock::new(positions));
        let mut disk = Box::new(Disk {
            dir: dir.clone(),
            options: options.clone(),
            hard_state,
            segments,
            active,
            pending: Vec::new(),
            positions: positions.clone(),
            snapshot,
            incoming: None,
            spare: Spare::None,
            #[cfg(test)]
            crash_at: None,
            stats,
            durable: 0,
            _lock: lock,
        });
        if let Some((index, term)) = point {
            let (held, first) = {
                let p = disk.read_positions();
                (p.term(index) == Some(term), p.first)
            };
            if held {
                let through = index.saturating_sub(options.keep_behind_snapshot);
                let through_term = disk.read_positions().term(through);
                if let Some(term) = through_term.filter(|_| through >= first) {
                    disk.write_positions().forget_through(through, term);
                    disk.delete_compacted_segments()?;
                }
            } else if index + 1 >= first {
                let last = disk.read_positions().last_index();
                report.discarded = (last >= first).then_some((first, last));
                disk.discard_all(index, term)?;
                report.discarded_by_snapshot = true;
            }
        }
        let durable = disk.read_positions().last_index();
        disk.durable = durable;
        let summary = disk.summary();
        Ok(FileLog {
            dir,
            options,
            identity,
            recovery: report,
            queue: Queue::default(),
            spent: Queue::default(),
            disk: Some(disk),
            flushing: Vec::new(),
            flushing_bytes: 0,
            positions,
            summary,
            failed: false,
            last_error: None,
        })
    }

    /// This data directory's identity (its incarnation is what the node announces to its
    /// peers).
    pub fn identity(&self) -> DirIdentity {
        self.identity
    }

    /// Checks what a host that rebuilds its state machine from the snapshot and the log
    /// (as `coracle node` does) needs on top of what [`open`](Self::open) checks: every
    /// entry after the snapshot (from index 1 without one) is in the log
    /// ([`Damage::Gap`]), and the hard state's term is at least the newest entry's
    /// ([`Damage::StaleHardState`]: a host following Raft makes the term durable before
    /// any entry of it).
    pub fn check_complete(&self) -> Result<(), FileLogError> {
        let damaged = |damage| {
            Err(FileLogError::Damaged {
                dir: self.dir.clone(),
                damage,
            })
        };
        let (first, last, log_term) = {
            let p = self.read_positions()?;
            let last = p.last_index();
            (p.first, last, p.term(last).unwrap_or(0))
        };
        let covered = self.snapshot_point().map_or(0, |(i, _)| i);
        if covered + 1 < first {
            return damaged(Damage::Gap {
                from: covered + 1,
                to: first - 1,
            });
        }
        let hard_state = self.summary.hard_state;
        if last >= first && log_term > hard_state.current_term {
            return damaged(Damage::StaleHardState {
                term: hard_state.current_term,
                log_term,
                index: last,
            });
        }
        Ok(())
    }

    /// A memory log for the node, filled from what the store holds (at a start, before
    /// any batch): the hard state, the kept snapshot's metadata, the compaction point, the
    /// terms of every entry, every membership entry, and the data of the newest entries
    /// up to `budget` bytes (at least the last one); the others are read back when the
    /// node asks ([`Output::Fetch`](coracle::Output::Fetch), [`LogReader::entries`]).
    pub fn recover(&self, budget: usize) -> Result<CachedLog, FileLogError> {
        let disk = self.disk.as_deref().ok_or(FileLogError::Failed)?;
        let mut log = CachedLog::new(budget);
        log.set_hard_state(disk.hard_state);
        if let Some(s) = &disk.snapshot {
            log.set_snapshot_meta(s.meta);
        }
        let reader = self.reader();
        let p = self.read_positions()?;
        if p.first > 1 {
            log.reset(p.first - 1, p.compacted_term);
        }
        let last = p.last_index();
        // The newest entries whose records fit in the budget (at least the last one).
        let mut with_data = last + 1;
        let mut bytes = 0u64;
        while with_data > p.first {
            let len = disk.record_len(&p, with_data - 1);
            if with_data <= last && bytes + len > budget as u64 {
                break;
            }
            bytes += len;
            with_data -= 1;
        }
        let refused = |e: coracle::StorageError| {
            FileLogError::BadSnapshot(format!("the memory log refused an entry: {e}"))
        };
        for index in p.first..with_data {
            let term = p.term(index).unwrap_or(0);
            if p.is_config(index) {
                let e = reader.entries_locked(&p, index, index, 0)?;
                let e = e.first().ok_or(FileLogError::Failed)?;
                log.append(&e.as_entry()).map_err(refused)?;
            } else {
                log.append_without_data(index, term, EntryKind::Command)
                    .map_err(refused)?;
            }
        }
        let mut next = with_data;
        while next <= last {
            let read = reader.entries_locked(&p, next, last, snapshot::PIECE * 4)?;
            if read.is_empty() {
                return Err(FileLogError::Failed);
            }
            for e in &read {
                log.append(&e.as_entry()).map_err(refused)?;
            }
            next += read.len() as u64;
        }
        Ok(log)
    }

    /// Queues the operations of `batch` (memory only: no I/O), in the contract's order:
    /// hard state, snapshot chunk, kept snapshot, reset, truncation, entries, compaction.
    /// A flush ([`begin_flush`](Self::begin_flush) or [`flush`](Self::flush)) performs them;
    /// once it is done, every batch queued before it is durable.
    pub fn persist(&mut self, batch: &Batch<'_>) {
        let q = &mut self.queue;
        if let Some(hs) = batch.hard_state {
            q.hard_state = Some(hs);
        }
        if let Some(c) = batch.snapshot_chunk {
            q.ops.push(Op::Chunk {
                meta: Box::new(*c.meta),
                offset: c.offset,
                data: c.data.to_vec(),
            });
        }
        match batch.snapshot {
            Some(SnapshotWrite::Installed(meta)) => q.ops.push(Op::Installed(Box::new(*meta))),
            Some(SnapshotWrite::Taken(meta)) => q.ops.push(Op::Taken(Box::new(*meta))),
            None => {}
        }
        if let Some((index, term)) = batch.reset {
            q.ops.push(Op::Reset(index, term));
        }
        if let Some(from) = batch.truncate_from {
            q.ops.push(Op::Truncate(from));
        }
        let mut expected: Option<Index> = None;
        for entry in batch.entries.iter() {
            if let Some(e) = expected.filter(|&e| e != entry.index) {
                self.fail(FileLogError::OutOfOrder {
                    index: entry.index,
                    last: e - 1,
                });
                return;
            }
            expected = Some(entry.index + 1);
            if entry.data.len() > self.options.max_entry_bytes {
                self.fail(FileLogError::EntryTooLarge {
                    len: entry.data.len(),
                    max: self.options.max_entry_bytes,
                });
                return;
            }
            let start = q.records.len();
            if q.ops.is_empty() || !matches!(q.ops.last(), Some(Op::Append { .. })) {
                // The first entry of a run says where it goes: entries written again after
                // a truncation in the same batch cut the log there.
                q.ops.push(Op::Truncate(entry.index));
            }
            record::push_entry(&mut q.records, &entry);
            q.ops.push(Op::Append {
                index: entry.index,
                term: entry.term,
                kind: entry.kind,
                range: start..q.records.len(),
            });
        }
        if let Some(through) = batch.compact_through {
            q.ops.push(Op::Compact(through));
        }
    }

    /// Takes every operation queued so far as one job for the thread that makes them
    /// durable (`None` if nothing is queued, or a job is out already: the operations
    /// queued meanwhile wait for the next one). Hand its result to
    /// [`end_flush`](Self::end_flush); run one job at a time.
    pub fn begin_flush(&mut self) -> io::Result<Option<FlushJob>> {
        if self.failed {
            return Err(FileLogError::Failed.into());
        }
        if self.queue.is_empty() || self.disk.is_none() {
            return Ok(None);
        }
        let Some(disk) = self.disk.take() else {
            return Ok(None);
        };
        self.flushing.clear();
        self.flushing_bytes = self.queue.records.len() as u64;
        self.flushing
            .extend(self.queue.ops.iter().filter_map(|op| match op {
                Op::Append { index, range, .. } => Some((*index, range.len() as u64)),
                _ => None,
            }));
        Ok(Some(FlushJob {
            disk,
            queue: std::mem::replace(&mut self.queue, std::mem::take(&mut self.spent)),
        }))
    }

    /// Takes back what a [`FlushJob`] did: on success every batch queued before its
    /// [`begin_flush`](Self::begin_flush) is durable (call
    /// [`Node::persisted`](coracle::Node::persisted) with the newest token of them). A
    /// failure poisons the log: it takes no more writes (the kernel may have dropped the
    /// pages a failed fsync could not write, so retrying would lie); call
    /// [`Node::persist_failed`](coracle::Node::persist_failed) and reopen it. The detailed
    /// error is also kept in [`last_error`](Self::last_error).
    pub fn end_flush(&mut self, done: FlushDone) -> io::Result<()> {
        self.flushing.clear();
        self.flushing_bytes = 0;
        self.summary = done.disk.summary();
        self.disk = Some(done.disk);
        self.spent = done.spent;
        self.poison_on_error(done.result)
    }

    /// Performs everything queued, on this thread, and makes it durable (a job begun and
    /// ended at once: tests and simple hosts).
    pub fn flush(&mut self) -> io::Result<()> {
        match self.begin_flush()? {
            Some(job) => self.end_flush(job.run()),
            None => Ok(()),
        }
    }

    /// True while a [`FlushJob`] is out.
    pub fn is_flushing(&self) -> bool {
        self.disk.is_none()
    }

    /// True if operations wait for a flush.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Reads entries and snapshot chunks back, on any thread.
    pub fn reader(&self) -> LogReader {
        LogReader {
            dir: self.dir.clone(),
            positions: self.positions.clone(),
            max_payload: self.options.max_entry_bytes + record::ENTRY_HEADER,
        }
    }

    /// Starts writing the host's own snapshot of its state machine at applied `meta.index`
    /// (`meta`: the term there and the configuration in force there, what
    /// [`Node::snapshot_taken`](coracle::Node::snapshot_taken) will answer) into a file of
    /// its own, on any thread; [`finish_snapshot`](Self::finish_snapshot) seals it. The
    /// [`SnapshotWrite::Taken`] of the next batch makes it the kept snapshot.
    pub fn snapshot_writer(&self, meta: &SnapshotMeta) -> Result<SnapshotWriter, FileLogError> {
        if self.failed {
            return Err(FileLogError::Failed);
        }
        SnapshotWriter::create(&self.dir, meta)
    }

    /// Seals a snapshot written with a [`SnapshotWriter`] (size, checksum, fsync; on any
    /// thread): then call [`Node::snapshot_taken`](coracle::Node::snapshot_taken) with
    /// its index. Dropping a writer before this removes its file.
    pub fn finish_snapshot(writer: SnapshotWriter) -> Result<(), FileLogError> {
        writer.finish().map(|_| ())
    }

    /// Removes a sealed snapshot that will not be kept (the node refused it as stale).
    pub fn discard_snapshot(&self, index: Index) {
        let _ = fs::remove_file(self.dir.join(snapshot::saving(index)));
    }

    /// Room for an entry of `kind` with `len` bytes of data under the quota
    /// ([`Options::max_log_bytes`]), counting what is queued: a host checks it before it
    /// proposes a command (the leader's log sets the pace of every log). The last
    /// sixteenth of the quota is kept for no-op and membership entries.
    pub fn check_room(&self, kind: EntryKind, len: usize) -> Result<(), FileLogError> {
        let Some(limit) = self.options.max_log_bytes else {
            return Ok(());
        };
        // A new segment's header too if the records queued fill the active one.
        let queued = self.flushing_bytes + self.queue.records.len() as u64;
        let rolls = self.summary.active_bytes + queued >= self.options.segment_bytes;
        let needed = self.disk_bytes()
            + record::entry_record_len(len) as u64
            + if rolls { segment::HEADER as u64 } else { 0 };
        let reserved = match kind {
            EntryKind::Command => Options::reserved(limit),
            EntryKind::Noop | EntryKind::Membership => 0,
        };
        if needed > limit - reserved {
            return Err(FileLogError::QuotaExceeded {
                dir: self.dir.clone(),
                limit,
                reserved,
                needed,
            });
        }
        Ok(())
    }

    /// Reads the kept snapshot back, a piece at a time, checking its checksum: its
    /// metadata and size, if there is one.
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>, FileLogError> {
        snapshot::read(&self.dir)
    }

    /// The kept snapshot (metadata and size; the bytes stay in the file: read them with
    /// [`LogReader::snapshot`]), as of the last flush.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.summary.snapshot
    }

    /// Index and term of the kept snapshot, if any.
    pub fn snapshot_point(&self) -> Option<(Index, Term)> {
        self.summary.snapshot.map(|s| (s.meta.index, s.meta.term))
    }

    /// The hard state, as of the last flush.
    pub fn hard_state(&self) -> HardState {
        self.summary.hard_state
    }

    /// Index of the first entry kept, as of the last flush (or the one running).
    pub fn first_index(&self) -> Index {
        self.read_positions().map_or(1, |p| p.first)
    }

    /// Index of the last entry, as of the last flush (or the one running).
    pub fn last_index(&self) -> Index {
        self.read_positions().map_or(0, |p| p.last_index())
    }

    /// Term of `index` (`first_index() - 1..=last_index()`).
    pub fn term(&self, index: Index) -> Option<Term> {
        self.read_positions().ok()?.term(index)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The detailed cause of the last error.
    pub fn last_error(&self) -> Option<&FileLogError> {
        self.last_error.as_ref()
    }

    /// True once a write failed: the log takes no more writes until reopened.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// I/O counters since open (as of the last flush).
    pub fn stats(&self) -> Stats {
        self.summary.stats
    }

    /// What open found and repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Bytes of records queued and not yet flushed.
    pub fn pending_bytes(&self) -> usize {
        self.queue.records.len()
    }

    /// Bytes of the log's records after entry `index` (what a follower whose match index it
    /// is lacks, on a leader): those written, from a running count (no scan of the log),
    /// those the running flush is writing, and those queued for the next flush. Record
    /// bytes as the segments hold them (each entry's data and a few bytes of framing).
    pub fn bytes_after(&self, index: Index) -> u64 {
        let (written, last_written) = self
            .positions
            .read()
            .map_or((0, 0), |p| (p.bytes_after(index), p.last_index()));
        // The running job's entries, until it has written them into the positions.
        let flushing: u64 = self
            .flushing
            .iter()
            .filter(|&&(i, _)| i > index && i > last_written)
            .map(|&(_, len)| len)
            .sum();
        let queued: u64 = self
            .queue
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Append {
                    index: i, range, ..
                } if *i > index => Some(range.len() as u64),
                _ => None,
            })
            .sum();
        written + flushing + queued
    }

    /// Bytes of all segments (as of the last flush), the records of the flush under way and
    /// those queued included.
    pub fn disk_bytes(&self) -> u64 {
        self.summary.disk_bytes + self.flushing_bytes + self.queue.records.len() as u64
    }

    /// The segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.read_positions()
            .map(|p| p.segments.iter().map(|(_, path)| path.clone()).collect())
            .unwrap_or_default()
    }

    fn read_positions(&self) -> Result<std::sync::RwLockReadGuard<'_, Positions>, FileLogError> {
        self.positions.read().map_err(|_| FileLogError::Failed)
    }

    fn poison_on_error<T>(&mut self, result: Result<T, FileLogError>) -> io::Result<T> {
        result.map_err(|e| {
            let out = io::Error::new(e.kind(), e.to_string());
            self.fail(e);
            out
        })
    }

    fn fail(&mut self, e: FileLogError) {
        self.failed = true;
        self.last_error = Some(e);
    }

    /// Test only: the disk, when no job is out.
    #[cfg(test)]
    fn disk_mut(&mut self) -> &mut Disk {
        self.disk.as_deref_mut().expect("no flush job is out")
    }

    /// Test only: the disk, when no job is out.
    #[cfg(test)]
    fn disk_ref(&self) -> &Disk {
        self.disk.as_deref().expect("no flush job is out")
    }

    /// Test only: the last index once the queued operations are performed.
    #[cfg(test)]
    fn queued_last_index(&self) -> Index {
        let mut last = self.last_index();
        for op in &self.queue.ops {
            match op {
                Op::Reset(index, _) => last = *index,
                Op::Truncate(from) => last = last.min(from - 1),
                Op::Append { .. } => last += 1,
                _ => {}
            }
        }
        last
    }

    /// Stops snapshot installs at `step` as a crash would (tests of crash safety).
    #[cfg(test)]
    pub(crate) fn crash_at(&mut self, step: Option<&'static str>) {
        self.disk_mut().crash_at = step;
    }

    /// Test only: waits until the spare being prepared is ready (or failed).
    #[cfg(test)]
    pub(crate) fn wait_for_spare(&mut self) -> bool {
        self.disk_mut().wait_for_spare()
    }
}

impl Disk {
    fn read_positions(&self) -> std::sync::RwLockReadGuard<'_, Positions> {
        self.positions.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_positions(&self) -> std::sync::RwLockWriteGuard<'_, Positions> {
        self.positions.write().unwrap_or_else(|e| e.into_inner())
    }

    fn summary(&self) -> Summary {
        Summary {
            stats: self.stats,
            disk_bytes: self.segments.iter().map(|s| s.len).sum::<u64>()
                + self.pending.len() as u64,
            active_bytes: self.segments.last().map_or(0, |s| s.len),
            snapshot: self.snapshot,
            hard_state: self.hard_state,
        }
    }

    /// Bytes of the record of `index` (its segment and the next record tell).
    fn record_len(&self, p: &Positions, index: Index) -> u64 {
        let Some(offset) = p.offset(index) else {
            return 0;
        };
        let seg = p.segment_of(index);
        let end = match p.offset(index + 1) {
            Some(next) if p.segment_of(index + 1) == seg => next,
            _ => self.segments.get(seg).map_or(offset, |s| s.len),
        };
        end.saturating_sub(offset)
    }

    /// Performs a job's operations in order (see "Order" in the module docs).
    fn perform(&mut self, queue: &mut Queue) -> Result<(), FileLogError> {
        let Queue {
            hard_state,
            ops,
            records,
        } = queue;
        self.stats.syncs += 1;
        if let Some(hs) = hard_state.take() {
            if hs != self.hard_state {
                hard_state::write(&self.dir, hs)?;
                self.stats.fsyncs += 2;
                self.hard_state = hs;
            }
        }
        let mut compact: Option<Index> = None;
        for op in ops.drain(..) {
            match op {
                Op::Chunk { meta, offset, data } => self.receive_chunk(&meta, offset, &data)?,
                Op::Installed(meta) => self.install_incoming(&meta)?,
                Op::Taken(meta) => self.adopt_taken(&meta)?,
                Op::Reset(index, term) => {
                    self.discard_all(index, term)?;
                    compact = None;
                }
                Op::Truncate(from) => self.truncate(from)?,
                Op::Append {
                    index,
                    term,
                    kind,
                    range,
                } => {
                    let rec = records.get(range).ok_or(FileLogError::Failed)?;
                    self.append(index, term, kind, rec)?;
                }
                Op::Compact(through) => compact = Some(compact.map_or(through, |c| c.max(through))),
            }
        }
        self.write_pending()?;
        if let Some(through) = compact {
            self.compact(through);
        }
        Ok(())
    }

    /// Writes the pending records with one write and makes them durable with one
    /// `fdatasync` (with the durability mark of what the previous one made durable if
    /// this one grows the file).
    fn write_pending(&mut self) -> Result<(), FileLogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let last = self.read_positions().last_index();
        let seg = self.segments.last_mut().ok_or(FileLogError::Failed)?;
        // What the previous flush made durable, in this one's fdatasync, if this one grows
        // the file (see "Durability marks" in `segment`): never more than is durable,
        // whatever a crash keeps. Inside the allocated size, the size tells a cut.
        let end = seg.len + self.pending.len() as u64;
        if let Some(m) = seg
            .mark
            .filter(|m| m.durable < self.durable && end > m.allocated)
        {
            segment::write_mark(&self.active, seg, self.durable, false, m.allocated)?;
        }
        let path = &seg.path;
        self.active
            .seek(SeekFrom::Start(seg.len))
            .map_err(io_err(path, "seek in segment"))?;
        self.active
            .write_all(&self.pending)
            .map_err(io_err(path, "write segment"))?;
        self.stats.bytes_written += self.pending.len() as u64;
        seg.len += self.pending.len() as u64;
        self.pending.clear();
        // A burst's buffer is not kept for good: memory follows the configuration.
        self.pending.shrink_to(PENDING_KEPT);
        self.active
            .sync_data()
            .map_err(io_err(path, "sync segment"))?;
        self.stats.fsyncs += 1;
        self.durable = last;
        self.maybe_prepare_spare();
        Ok(())
    }

    /// Appends the record `rec` of the next entry (rolling over to a new segment first if
    /// the active one is full).
    fn append(
        &mut self,
        index: Index,
        term: Term,
        kind: EntryKind,
        rec: &[u8],
    ) -> Result<(), FileLogError> {
        let active = self.segments.last();
        let preallocated = active.is_some_and(|s| s.preallocated);
        let active_len = active.map_or(0, |s| s.len) + self.pending.len() as u64;
        let holds_records = active.is_some_and(|s| active_len > s.records_start());
        // A segment that is not preallocated ends as soon as a spare is ready.
        let roll = holds_records
            && (active_len >= self.options.segment_bytes
                || (!preallocated
                    && active_len >= self.options.spare_after(false)
                    && self.spare_ready()));
        // A batch that does not follow the log (a bug of the host) is refused before
        // anything is written: written, it would be read back as damage. One lock of the
        // positions for the check and the push, but for a roll-over, which writes.
        let out_of_order = |last: Index| FileLogError::OutOfOrder { index, last };
        if roll {
            let last = self.read_positions().last_index();
            if index != last + 1 {
                return Err(out_of_order(last));
            }
            self.roll_over(index)?;
        }
        let offset = self.segments.last().map_or(0, |s| s.len) + self.pending.len() as u64;
        {
            let mut positions = self.write_positions();
            let last = positions.last_index();
            if index != last + 1 {
                return Err(out_of_order(last));
            }
            positions.push(term, kind, offset, rec.len() as u64);
        }
        self.pending.extend_from_slice(rec);
        Ok(())
    }

    /// Cuts `from..` off. Entries only pending are dropped from the buffer; entries
    /// already written are cut durably (see "Truncation and crashes" in the module docs).
    fn truncate(&mut self, from: Index) -> Result<(), FileLogError> {
        let (offset, seg) = {
            let p = self.read_positions();
            match p.offset(from) {
                Some(offset) => (offset, p.segment_of(from)),
                None => return Ok(()),
            }
        };
        let written = self.segments[seg].len;
        if seg + 1 == self.segments.len() && offset >= written {
            self.pending.truncate((offset - written) as usize);
            self.write_positions().truncate(from);
            return Ok(());
        }
        self.cut_durable(seg, offset, from)
    }

    /// Forgets `first..=through` and deletes the segments that hold only those entries. A
    /// deletion that fails is counted and tried again by the next compaction.
    fn compact(&mut self, through: Index) {
        let term = {
            let p = self.read_positions();
            if through < p.first {
                return;
            }
            match p.term(through) {
                Some(t) => t,
                None => return,
            }
        };
        self.write_positions().forget_through(through, term);
        if self.delete_compacted_segments().is_err() {
            self.stats.compactions_failed += 1;
        }
    }

    /// Writes the bytes of a chunk of the snapshot being received into its temporary file
    /// (not fsynced: it is not part of the durable state until installed). Offset 0, or
    /// another snapshot, starts a new one.
    fn receive_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FileLogError> {
        let same = self.incoming.as_ref().is_some_and(|i| &i.meta == meta);
        if offset == 0 || !same {
            self.incoming = None;
            self.incoming = Some(snapshot::Incoming::start(&self.dir, meta)?);
        }
        match &mut self.incoming {
            Some(i) => i.write_at(offset, data),
            None => Err(FileLogError::Failed),
        }
    }

    /// Test only: stops at `step` as a crash would (the test then drops the log unsynced
    /// and reopens it). A no-op otherwise.
    #[allow(clippy::unused_self)]
    fn crash_point(&self, step: &'static str) -> Result<(), FileLogError> {
        #[cfg(test)]
        if self.crash_at == Some(step) {
            return Err(FileLogError::BadSnapshot(format!(
                "simulated crash at {step}"
            )));
        }
        let _ = step;
        Ok(())
    }

    /// Makes the snapshot received in full the kept one (see "Snapshots" in the module
    /// docs for the order of the steps and why a crash between any two leaves the old or
    /// the new state). The log itself changes with the batch's reset or compaction.
    fn install_incoming(&mut self, meta: &SnapshotMeta) -> Result<(), FileLogError> {
        let mut incoming = match self.incoming.take() {
            Some(i) if &i.meta == meta => i,
            _ => {
                return Err(FileLogError::BadSnapshot(format!(
                    "snapshot at index {} is installed but was not received",
                    meta.index
                )));
            }
        };
        // 1. The temporary file becomes a complete snapshot file, fsynced.
        let size = incoming.seal()?;
        self.stats.fsyncs += 1;
        self.crash_point("sealed")?;
        // 2. It replaces the old snapshot in one rename, made durable by a directory fsync.
        let path = self.dir.join(snapshot::FILE);
        fs::rename(&incoming.path, &path).map_err(io_err(&path, "rename snapshot into place"))?;
        self.crash_point("renamed")?;
        dir::sync_dir(&self.dir)?;
        self.stats.fsyncs += 1;
        self.crash_point("dir-synced")?;
        self.snapshot = Some(Snapshot { meta: *meta, size });
        Ok(())
    }

    /// Makes the host's own snapshot at `meta.index` (sealed in its file by
    /// [`FileLog::finish_snapshot`]) the kept one: renames it over the old one and fsyncs
    /// the directory. If its header does not say `meta` (the host guessed the term or the
    /// configuration wrong), it is rewritten with `meta` first, a piece at a time.
    fn adopt_taken(&mut self, meta: &SnapshotMeta) -> Result<(), FileLogError> {
        let path = self.dir.join(snapshot::saving(meta.index));
        let file = File::open(&path).map_err(io_err(&path, "open the snapshot taken"))?;
        let header = snapshot::read_header(&file, &path)?;
        if header.meta != *meta {
            let fixed_name = format!("{}.fixed{}", snapshot::FILE, dir::TMP_SUFFIX);
            let mut w = snapshot::Writer::create_named(&self.dir, &fixed_name, meta)?;
            let mut data = SnapshotFile::from_parts(file, path.clone(), header);
            io::copy(&mut data, &mut w).map_err(io_err(&path, "copy the snapshot taken"))?;
            let fixed = w.finish()?;
            fs::rename(&fixed, &path).map_err(io_err(&path, "rename into place"))?;
        } else {
            drop(file);
        }
        fs::rename(&path, self.dir.join(snapshot::FILE))
            .map_err(io_err(&path, "rename into place"))?;
        dir::sync_dir(&self.dir)?;
        self.stats.fsyncs += 2;
        self.snapshot = Some(Snapshot {
            meta: *meta,
            size: header.size,
        });
        Ok(())
    }

    /// Starts preparing the next segment once the active one holds enough to want it.
    fn maybe_prepare_spare(&mut self) {
        let (active_len, preallocated) = self
            .segments
            .last()
            .map_or((0, false), |s| (s.len, s.preallocated));
        if !self.options.preallocate
            || !matches!(self.spare, Spare::None)
            || active_len < self.options.spare_after(preallocated)
        {
            return;
        }
        let (tx, done) = std::sync::mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let (dir, bytes, stop) = (self.dir.clone(), self.options.segment_bytes, cancel.clone());
        let spawned = std::thread::Builder::new()
            .name("coracle-spare".into())
            .spawn(move || {
                let _ = tx.send(segment::prepare_spare(&dir, bytes, &stop));
            });
        self.spare = match spawned {
            Ok(thread) => Spare::Preparing {
                done,
                cancel,
                thread,
            },
            Err(_) => {
                self.stats.spares_failed += 1;
                Spare::Failed
            }
        };
    }

    /// True if a spare is ready (taking the preparing thread's result if it is done).
    fn spare_ready(&mut self) -> bool {
        if let Spare::Preparing { done, .. } = &self.spare {
            self.spare = match done.try_recv() {
                Ok(Ok(Some(spare))) => Spare::Ready(spare),
                Ok(Ok(None) | Err(_)) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.stats.spares_failed += 1;
                    Spare::Failed
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return false,
            };
        }
        matches!(self.spare, Spare::Ready(_))
    }

    /// Test only: waits until the spare being prepared is ready (or failed).
    #[cfg(test)]
    fn wait_for_spare(&mut self) -> bool {
        if let Spare::Preparing { done, .. } = &self.spare {
            self.spare = match done.recv() {
                Ok(Ok(Some(spare))) => Spare::Ready(spare),
                _ => Spare::Failed,
            };
        }
        matches!(self.spare, Spare::Ready(_))
    }

    /// Creates the segment starting at `base` (from the spare if one is ready) and makes
    /// it the active one.
    fn new_segment(&mut self, base: Index, prev_term: Term) -> Result<(), FileLogError> {
        let spare = match self.spare_ready().then(|| std::mem::take(&mut self.spare)) {
            Some(Spare::Ready(spare)) => Some(spare),
            _ => None,
        };
        if matches!(self.spare, Spare::Failed) {
            // Tried again for the next segment.
            self.spare = Spare::None;
        }
        if let Some(spare) = &spare {
            self.stats.segments_preallocated += 1;
            self.stats.segments_recycled += u64::from(spare.recycled);
        }
        let created = segment::create(&self.dir, base, prev_term, spare)?;
        self.stats.fsyncs += 2;
        self.stats.segments_created += 1;
        self.write_positions()
            .segments
            .push((created.0.base, created.0.path.clone()));
        self.segments.push(created.0);
        self.active = created.1;
        Ok(())
    }

    /// Starts a new segment for entry `base`: makes everything pending durable first, so
    /// only the last segment can ever have a torn tail.
    fn roll_over(&mut self, base: Index) -> Result<(), FileLogError> {
        // Every record written is durable once written (a job writes and syncs at once).
        self.write_pending()?;
        self.trim_preallocated()?;
        self.durable = base - 1;
        let prev_term = self.read_positions().term(base - 1).unwrap_or(0);
        self.new_segment(base, prev_term)?;
        self.crash_point("next-created")?;
        // Sealed once the next segment exists (a crash before leaves it unsealed, and
        // nothing is taken for lost): a last segment that is sealed tells that the ones
        // after it were lost.
        let n = self.segments.len();
        let old = &mut self.segments[n - 2];
        if old.mark.is_some() {
            let file = segment::open_for_write(old)?;
            segment::write_mark(&file, old, base - 1, true, 0)?;
            file.sync_data()
                .map_err(io_err(&old.path, "sync the sealed segment"))?;
            self.stats.fsyncs += 1;
        }
        Ok(())
    }

    /// Trims the last segment to its records if it is preallocated (only the last segment
    /// may end in zeros or old records, see `recovery`; it is about to stop being the
    /// last). If that makes it shorter than its mark's allocated size (a full segment's
    /// records reach past it), the mark stops saying one first, durably, so the shorter
    /// file is never taken for one cut short.
    fn trim_preallocated(&mut self) -> Result<(), FileLogError> {
        let Some(s) = self.segments.last_mut().filter(|s| s.preallocated) else {
            return Ok(());
        };
        if let Some(m) = s.mark.filter(|m| s.len < m.allocated) {
            segment::write_mark(&self.active, s, m.durable, m.sealed, 0)?;
            self.active
                .sync_data()
                .map_err(io_err(&s.path, "sync the mark of a segment to trim"))?;
            self.stats.fsyncs += 1;
        }
        self.active
            .set_len(s.len)
            .and_then(|()| self.active.sync_data())
            .map_err(io_err(&s.path, "trim the preallocated tail of a segment"))?;
        self.stats.fsyncs += 1;
        s.preallocated = false;
        self.crash_point("trimmed")
    }

    /// Durably cuts the log at entry `from`, whose record is in segment `seg` at `offset`
    /// and already written (see "Truncation and crashes" in the module docs).
    fn cut_durable(&mut self, seg: usize, offset: u64, from: Index) -> Result<(), FileLogError> {
        self.pending.clear();
        // First the marks of that segment and the later ones say no more than what stays,
        // none is sealed and the one cut says no allocated size, durably: then no step of
        // the cut looks like lost entries.
        let keep = from - 1;
        self.durable = self.durable.min(keep);
        for (i, s) in self.segments.iter_mut().enumerate().skip(seg) {
            let allocated = if i == seg { 0 } else { s.allocated() };
            if let Some(m) = s
                .mark
                .filter(|m| m.sealed || m.durable > keep || m.allocated > allocated)
            {
                let file = segment::open_for_write(s)?;
                segment::write_mark(&file, s, m.durable.min(keep), false, allocated)?;
                file.sync_data()
                    .map_err(io_err(&s.path, "sync the lowered durability mark"))?;
                self.stats.fsyncs += 1;
            }
        }
        // Readers see the cut before any file changes.
        {
            let mut p = self.write_positions();
            p.truncate(from);
            p.segments.truncate(seg + 1);
        }
        let mut removed = false;
        while self.segments.len() > seg + 1 {
            if let Some(s) = self.segments.pop() {
                fs::remove_file(&s.path).map_err(io_err(&s.path, "remove truncated segment"))?;
                self.stats.segments_deleted += 1;
                removed = true;
            }
        }
        if removed {
            dir::sync_dir(&self.dir)?;
            self.stats.fsyncs += 1;
        }
        let s = &mut self.segments[seg];
        let file = segment::open_for_write(s)?;
        file.set_len(offset)
            .map_err(io_err(&s.path, "truncate segment"))?;
        file.sync_all()
            .map_err(io_err(&s.path, "sync truncated segment"))?;
        self.stats.fsyncs += 1;
        s.len = offset;
        s.preallocated = false;
        self.active = file;
        Ok(())
    }

    /// Deletes the segments whose entries are all compacted, oldest first, or keeps one as
    /// the spare (see "Preallocation" in the module docs). The active segment always stays.
    fn delete_compacted_segments(&mut self) -> Result<(), FileLogError> {
        let first = self.read_positions().first;
        let mut removed = 0;
        while self.segments.len() - removed >= 2 && self.segments[removed + 1].base <= first {
            removed += 1;
        }
        if removed == 0 {
            return Ok(());
        }
        // Readers stop seeing them before any goes.
        self.write_positions().segments.drain(..removed);
        let gone: Vec<Segment> = self.segments.drain(..removed).collect();
        // A file that cannot be removed stays behind the log: the next open reads it and
        // compacts it away again (the snapshot covers it).
        let mut result = Ok(());
        for s in &gone {
            if self.recycle(s) {
                continue;
            }
            if let Err(e) = fs::remove_file(&s.path) {
                result = Err(io_err(&s.path, "remove compacted segment")(e));
            }
        }
        self.stats.segments_deleted += removed as u64;
        dir::sync_dir(&self.dir)?;
        self.stats.fsyncs += 1;
        result
    }

    /// Makes compacted segment `s` the spare, if a spare is wanted and the segment is large
    /// enough to be worth it: it replaces no spare, a failed one, or one still being
    /// written (stopped). Only compaction recycles: the entries it drops are below every
    /// index the log can hold again, which recovery relies on; truncated or discarded
    /// segments are deleted. False if the segment is still to be deleted.
    fn recycle(&mut self, s: &Segment) -> bool {
        if !self.options.preallocate
            || s.len < self.options.segment_bytes / 2
            || matches!(self.spare, Spare::Ready(_))
        {
            return false;
        }
        let Ok(spare) = segment::recycle(&self.dir, &s.path) else {
            return false;
        };
        self.drop_spare();
        self.spare = Spare::Ready(spare);
        true
    }

    /// Stops a spare being prepared and removes an unused one.
    fn drop_spare(&mut self) {
        match std::mem::take(&mut self.spare) {
            Spare::Preparing {
                done,
                cancel,
                thread,
            } => {
                cancel.store(true, Ordering::Relaxed);
                let _ = thread.join();
                if let Ok(Ok(Some(spare))) = done.try_recv() {
                    let _ = fs::remove_file(&spare.path);
                }
            }
            Spare::Ready(spare) => {
                let _ = fs::remove_file(&spare.path);
            }
            Spare::None | Spare::Failed => {}
        }
    }

    /// Discards the whole log, which restarts after the snapshot at `index`/`term` (§7).
    /// Segments go newest first; a crash in the middle leaves a prefix, which the next open
    /// discards again because the snapshot is durable already.
    ///
    /// The order keeps a segment on disk at every step (a directory without one is
    /// damage): the segments after the new start go, newest first (a crash leaves a prefix
    /// of the old log, which the durable snapshot replaces again on open); the new, empty
    /// segment is created (replacing one of the same name); the older ones go (a crash
    /// leaves them before the new one, which starts right after the snapshot: recovery
    /// removes them as superseded).
    fn discard_all(&mut self, index: Index, term: Term) -> Result<(), FileLogError> {
        self.pending.clear();
        {
            let mut p = self.write_positions();
            p.reset(index, term);
            p.segments.clear();
        }
        self.durable = index;
        let base = index + 1;
        while self.segments.last().is_some_and(|s| s.base > base) {
            if let Some(s) = self.segments.pop() {
                fs::remove_file(&s.path).map_err(io_err(&s.path, "remove discarded segment"))?;
                self.stats.segments_deleted += 1;
                self.crash_point("discarding")?;
            }
        }
        self.trim_preallocated()?;
        let older = std::mem::take(&mut self.segments);
        self.new_segment(base, term)?;
        self.crash_point("discarding")?;
        let mut removed = false;
        for s in older.iter().filter(|s| s.base != base) {
            fs::remove_file(&s.path).map_err(io_err(&s.path, "remove discarded segment"))?;
            self.stats.segments_deleted += 1;
            removed = true;
        }
        if removed {
            dir::sync_dir(&self.dir)?;
            self.stats.fsyncs += 1;
        }
        Ok(())
    }
}

impl Drop for Disk {
    /// Stops a spare being prepared and removes an unused one (open would remove it too).
    fn drop(&mut self) {
        self.drop_spare();
    }
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog")
            .field("dir", &self.dir)
            .field("first_index", &self.first_index())
            .field("last_index", &self.last_index())
            .field("hard_state", &self.summary.hard_state)
            .field("queued_ops", &self.queue.ops.len())
            .field("snapshot", &self.snapshot_point())
            .field("flushing", &self.is_flushing())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}
