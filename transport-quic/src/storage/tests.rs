//! Tests of the durable log: roundtrips, crashes (a `FileLog` dropped without `sync`), torn
//! and damaged files, the lock, read-only directories, a full log, and the core's
//! durable-store conformance suite (against `MemStore`, the reference).

use super::*;
use coracle::conformance::durable::{self, Crash, DurableStore, Recovered};
use coracle::{Entries, Entry, EntryKind, StorageError, SyncToken};
use proptest::prelude::*;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A batch with nothing in it, to fill in.
fn batch<'a>() -> Batch<'a> {
    Batch {
        token: SyncToken(0),
        hard_state: None,
        snapshot_chunk: None,
        snapshot: None,
        reset: None,
        truncate_from: None,
        entries: Entries::EMPTY,
        compact_through: None,
    }
}

/// The verbs of a memory log, as batches queued on the store (the tests speak in them: a
/// `sync` is a flush, a log dropped without one is a crash).
trait Verbs {
    fn set_hard_state(&mut self, hs: HardState) -> Result<(), StorageError>;
    fn append(&mut self, e: &Entry<'_>) -> Result<(), StorageError>;
    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError>;
    fn compact(&mut self, through: Index) -> Result<(), StorageError>;
    fn entry(&self, index: Index) -> Option<OwnedEntry>;
    fn sync(&mut self) -> io::Result<()>;
    /// The host's own snapshot: written in its file, then kept (a `Taken` batch), flushed.
    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), FileLogError>;
    fn receive_snapshot_chunk(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]);
    /// The install rule of the core: keep the entries after the snapshot if the log holds
    /// its index with its term, else reset; then flushed.
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> io::Result<()>;
    /// The kept snapshot's bytes, read from its file.
    fn snapshot_bytes(&self) -> Option<Vec<u8>>;
    /// A chunk of the kept snapshot (empty past its end); `Err` without one.
    fn snapshot_chunk(&self, offset: u64, max: usize) -> Result<Vec<u8>, ()>;
}

impl Verbs for FileLog {
    fn set_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.persist(&Batch {
            hard_state: Some(hs),
            ..batch()
        });
        Ok(())
    }

    /// Under a quota, flushes first: a host checks the room against the files.
    fn append(&mut self, e: &Entry<'_>) -> Result<(), StorageError> {
        if self.is_failed() {
            return Err(StorageError::Unavailable);
        }
        if !self.is_flushing() && e.index != self.queued_last_index() + 1 {
            return Err(StorageError::OutOfRange);
        }
        if self.options.max_log_bytes.is_some() {
            self.flush().map_err(|_| StorageError::Unavailable)?;
        }
        if let Err(err) = self.check_room(e.kind, e.data.len()) {
            self.last_error = Some(err);
            return Err(StorageError::Full);
        }
        let one = [*e];
        self.persist(&Batch {
            entries: Entries::from_slice(&one),
            ..batch()
        });
        Ok(())
    }

    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        if from < self.first_index() {
            return Err(StorageError::Compacted);
        }
        self.persist(&Batch {
            truncate_from: Some(from),
            ..batch()
        });
        Ok(())
    }

    /// Compacts at once (flushed).
    fn compact(&mut self, through: Index) -> Result<(), StorageError> {
        self.persist(&Batch {
            compact_through: Some(through),
            ..batch()
        });
        self.flush().map_err(|_| StorageError::Unavailable)
    }

    fn entry(&self, index: Index) -> Option<OwnedEntry> {
        self.reader().entries(index, index, 0).ok()?.pop()
    }

    fn sync(&mut self) -> io::Result<()> {
        self.flush()
    }

    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), FileLogError> {
        if let Some((index, _)) = self.snapshot_point().filter(|(i, _)| *i > meta.index) {
            return Err(FileLogError::StaleSnapshot {
                index: meta.index,
                saved: index,
            });
        }
        let mut w = self.snapshot_writer(meta)?;
        w.write_all(&data).map_err(io_err(self.dir(), "write"))?;
        FileLog::finish_snapshot(w)?;
        self.persist(&Batch {
            snapshot: Some(SnapshotWrite::Taken(meta)),
            ..batch()
        });
        self.flush().map_err(|e| FileLogError::Io {
            path: self.dir().to_path_buf(),
            op: "flush",
            source: e,
        })
    }

    fn receive_snapshot_chunk(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) {
        self.persist(&Batch {
            snapshot_chunk: Some(coracle::SnapshotChunkWrite { meta, offset, data }),
            ..batch()
        });
    }

    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> io::Result<()> {
        self.flush()?;
        let holds = self.term(meta.index) == Some(meta.term);
        self.persist(&Batch {
            snapshot: Some(SnapshotWrite::Installed(meta)),
            reset: (!holds).then_some((meta.index, meta.term)),
            compact_through: holds.then_some(meta.index),
            ..batch()
        });
        self.flush()
    }

    fn snapshot_chunk(&self, offset: u64, max: usize) -> Result<Vec<u8>, ()> {
        let index = self.snapshot_point().ok_or(())?.0;
        let file = self.reader().snapshot(index).map_err(|_| ())?.ok_or(())?;
        Ok(file
            .chunk(offset, max)
            .map_err(|_| ())?
            .map(|(b, _)| b)
            .unwrap_or_default())
    }

    fn snapshot_bytes(&self) -> Option<Vec<u8>> {
        let mut f = self.reader().snapshot(self.snapshot_point()?.0).ok()??;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut out).ok()?;
        Some(out)
    }
}

/// A unique directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "coracle-quic-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn data(index: Index, len: usize) -> Vec<u8> {
    (0..len).map(|i| (index as usize * 31 + i) as u8).collect()
}

/// Metadata of a snapshot of `data` at `index`/`term` with the bootstrap configuration.
fn meta(index: Index, term: Term, data: &[u8]) -> SnapshotMeta {
    let _ = data;
    SnapshotMeta::new(index, term, &[]).unwrap()
}

/// Saves `data` as the snapshot at `index`/`term`: the host's own if the log holds that
/// entry, else one installed from a leader (which discards the log, §7).
fn save(log: &mut FileLog, index: Index, term: Term, data: &[u8]) -> Result<(), FileLogError> {
    let m = meta(index, term, data);
    if log.term(index) == Some(term) || log.snapshot_point().is_some_and(|(i, _)| i > index) {
        return log.save_snapshot(&m, data.to_vec());
    }
    log.receive_snapshot_chunk(&m, 0, data);
    log.install_snapshot(&m).map_err(|e| FileLogError::Io {
        path: log.dir().to_path_buf(),
        op: "install",
        source: e,
    })
}

fn append(log: &mut FileLog, index: Index, term: Term) {
    append_command(log, index, term, &data(index, (index % 7) as usize * 5));
}

fn append_range(log: &mut FileLog, range: std::ops::RangeInclusive<Index>, term: Term) {
    for i in range {
        append(log, i, term);
    }
}

/// (index, term, data) of every entry kept.
fn contents(log: &FileLog) -> Vec<(Index, Term, Vec<u8>)> {
    (log.first_index()..=log.last_index())
        .map(|i| {
            let e = log.entry(i).unwrap();
            (e.index, e.term, e.data.to_vec())
        })
        .collect()
}

fn expected(range: std::ops::RangeInclusive<Index>, term: Term) -> Vec<(Index, Term, Vec<u8>)> {
    range
        .map(|i| (i, term, data(i, (i % 7) as usize * 5)))
        .collect()
}

/// Small segments, never preallocated (so where segments start does not depend on how
/// fast a spare is written; the preallocation tests use [`preallocated`]).
fn small_segments() -> Options {
    Options::new().segment_bytes(256).preallocate(false)
}

/// Segments of 4 KiB, preallocated.
fn preallocated() -> Options {
    Options::new().segment_bytes(4096)
}

/// Opens a log in `dir` that holds entries `1..=last_index()` of term 1, synced: the first
/// segment (never preallocated) some, the active one, preallocated, the last 10.
fn open_preallocated(dir: &Path) -> FileLog {
    let mut log = FileLog::open_with(dir, preallocated()).unwrap();
    let mut next = 1;
    // Until a spare is wanted (half a segment), then until it is used.
    while log.stats().segments_preallocated == 0 {
        append(&mut log, next, 1);
        log.sync().unwrap();
        next += 1;
        if !matches!(log.disk_ref().spare, Spare::None) {
            assert!(log.wait_for_spare(), "the spare is written");
        }
    }
    append_range(&mut log, next..=next + 8, 1);
    log.sync().unwrap();
    assert!(log.disk_ref().segments.last().unwrap().preallocated);
    log
}

/// The record offsets of a segment file that ends in zeros, and where the zeros start.
fn records_before_zeros(bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut at = segment::HEADER;
    let mut starts = Vec::new();
    while let Ok((_, next)) = record::read_frame(bytes, at, 1 << 20) {
        starts.push(at);
        at = next;
    }
    assert!(
        bytes[at..].iter().all(|&b| b == 0),
        "zeros after the records"
    );
    (starts, at)
}

fn temporary_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(dir::TMP_SUFFIX))
        .collect()
}

/// The offsets where the records of a segment file start, and its length.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut at = segment::HEADER;
    let mut starts = Vec::new();
    while at < bytes.len() {
        starts.push(at);
        at = record::read_frame(bytes, at, 1 << 20).unwrap().1;
    }
    starts
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn append_sync_reopen_roundtrip() {
    let dir = TempDir::new("roundtrip");
    let hs = HardState {
        current_term: 3,
        voted_for: Some(2),
    };
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (1, 0));
        assert_eq!(log.term(0), Some(0));
        assert_eq!(log.hard_state(), HardState::default());
        log.set_hard_state(hs).unwrap();
        append_range(&mut log, 1..=10, 1);
        log.append(&Entry {
            index: 11,
            term: 3,
            kind: EntryKind::Noop,
            data: b"",
        })
        .unwrap();
        log.append(&Entry {
            index: 12,
            term: 3,
            kind: EntryKind::Membership,
            data: b"1,2,3",
        })
        .unwrap();
        assert_eq!(
            log.append(&Entry {
                index: 14,
                term: 3,
                kind: EntryKind::Command,
                data: b""
            }),
            Err(StorageError::OutOfRange)
        );
        log.sync().unwrap();
    }
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(log.hard_state(), hs);
    assert_eq!((log.first_index(), log.last_index()), (1, 12));
    assert_eq!(contents(&log)[..10], expected(1..=10, 1)[..]);
    assert_eq!(log.entry(11).unwrap().kind, EntryKind::Noop);
    let m = log.entry(12).unwrap();
    assert_eq!(
        (m.kind, m.term, &m.data[..]),
        (EntryKind::Membership, 3, &b"1,2,3"[..])
    );
    assert_eq!(log.recovery().tail_cut, None);
    assert_eq!(log.recovery().entries, 12);
}

#[test]
fn a_crash_before_sync_loses_only_unsynced_writes() {
    let dir = TempDir::new("crash");
    let synced = HardState {
        current_term: 1,
        voted_for: None,
    };
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        log.set_hard_state(synced).unwrap();
        append_range(&mut log, 1..=5, 1);
        log.sync().unwrap();
        append_range(&mut log, 6..=8, 2);
        log.set_hard_state(HardState {
            current_term: 2,
            voted_for: Some(9),
        })
        .unwrap();
        assert!(log.pending_bytes() > 0);
        // Dropped without sync: a crash.
    }
    let mut log = FileLog::open(dir.path()).unwrap();
    assert_eq!(contents(&log), expected(1..=5, 1), "synced entries survive");
    assert_eq!(log.hard_state(), synced);
    append_range(&mut log, 6..=7, 2);
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(log.last_index(), 7);
    assert_eq!(log.term(7), Some(2));
}

#[test]
fn group_commit_is_one_fsync_for_many_appends() {
    let dir = TempDir::new("group");
    let mut log = FileLog::open(dir.path()).unwrap();
    let before = log.stats();
    append_range(&mut log, 1..=1000, 1);
    assert_eq!(log.stats(), before, "appends do no I/O");
    log.sync().unwrap();
    let after = log.stats();
    assert_eq!(
        after.fsyncs,
        before.fsyncs + 1,
        "one fdatasync for 1000 entries"
    );
    assert_eq!(after.syncs, before.syncs + 1);
    assert_eq!(log.pending_bytes(), 0);
    log.sync().unwrap();
    assert_eq!(log.stats(), after, "nothing to sync, no fsync");
    drop(log);
    assert_eq!(FileLog::open(dir.path()).unwrap().last_index(), 1000);
}

#[test]
fn a_flush_job_on_another_thread_makes_what_it_took_durable() {
    let dir = TempDir::new("split");
    let mut log = FileLog::open(dir.path()).unwrap();
    append_range(&mut log, 1..=100, 1);
    let job = log.begin_flush().unwrap().expect("batches were queued");
    assert_eq!(log.pending_bytes(), 0);
    assert!(log.is_flushing());
    // The flush runs on another thread while this one queues more.
    let fsync = std::thread::spawn(move || job.run());
    append_range(&mut log, 101..=150, 1);
    assert!(
        log.begin_flush().unwrap().is_none(),
        "one job at a time: the others wait"
    );
    log.end_flush(fsync.join().unwrap()).unwrap();
    assert_eq!(
        log.last_index(),
        100,
        "the batches queued meanwhile are not in it"
    );
    let next = log.begin_flush().unwrap().expect("101..=150 still queued");
    log.end_flush(next.run()).unwrap();
    assert!(
        log.begin_flush().unwrap().is_none(),
        "nothing left to write"
    );
    drop(log);
    assert_eq!(
        contents(&FileLog::open(dir.path()).unwrap()),
        expected(1..=150, 1)
    );

    // A truncation queued while a job runs cuts what the job wrote, in the next job.
    let dir = TempDir::new("split-truncate");
    let mut log = FileLog::open(dir.path()).unwrap();
    append_range(&mut log, 1..=10, 1);
    let job = log.begin_flush().unwrap().unwrap();
    log.truncate_suffix(6).unwrap();
    log.end_flush(job.run()).unwrap();
    assert_eq!(log.last_index(), 10);
    log.sync().unwrap();
    drop(log);
    assert_eq!(
        contents(&FileLog::open(dir.path()).unwrap()),
        expected(1..=5, 1)
    );

    // A failed job poisons the log.
    let dir = TempDir::new("split-fail");
    let mut log = FileLog::open(dir.path()).unwrap();
    append_range(&mut log, 1..=3, 1);
    let job = log.begin_flush().unwrap().unwrap();
    let done = FlushDone {
        result: Err(FileLogError::Failed),
        ..job.run()
    };
    assert!(log.end_flush(done).is_err());
    assert!(log.is_failed());
    assert!(
        log.begin_flush().is_err(),
        "no more writes after a failed flush"
    );
}

#[test]
fn truncated_entries_never_come_back_after_a_crash() {
    let dir = TempDir::new("truncate");
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        append_range(&mut log, 1..=10, 1);
        log.sync().unwrap();
        log.truncate_suffix(6).unwrap();
        // New entries of a new term after the cut, then a crash before the flush: none of
        // it happened (nothing of it was acknowledged).
        append_range(&mut log, 6..=8, 2);
    }
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        assert_eq!(
            contents(&log),
            expected(1..=10, 1),
            "the batch was lost whole"
        );
        // The cut and the new entries in one flush: the cut is durable before the new
        // records are written.
        log.truncate_suffix(6).unwrap();
        append_range(&mut log, 6..=8, 2);
        log.sync().unwrap();
        // A second cut, of durable entries of both terms, flushed, then a crash.
        log.truncate_suffix(4).unwrap();
        log.sync().unwrap();
    }
    let mut log = FileLog::open(dir.path()).unwrap();
    assert_eq!(contents(&log), expected(1..=3, 1));
    append_range(&mut log, 4..=4, 3);
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open(dir.path()).unwrap();
    let mut want = expected(1..=3, 1);
    want.extend(expected(4..=4, 3));
    assert_eq!(contents(&log), want);
}

#[test]
fn truncating_buffered_entries_touches_no_file() {
    let dir = TempDir::new("truncate-buffered");
    let mut log = FileLog::open(dir.path()).unwrap();
    append_range(&mut log, 1..=5, 1);
    log.sync().unwrap();
    append_range(&mut log, 6..=10, 1);
    let before = log.stats();
    log.truncate_suffix(8).unwrap();
    assert_eq!(log.stats(), before);
    append_range(&mut log, 8..=9, 2);
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open(dir.path()).unwrap();
    let mut want = expected(1..=7, 1);
    want.extend(expected(8..=9, 2));
    assert_eq!(contents(&log), want);
}

#[test]
fn truncation_across_segments_removes_the_later_segments() {
    let dir = TempDir::new("truncate-segments");
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        append_range(&mut log, 1..=60, 1);
        log.sync().unwrap();
        assert!(segment_files(dir.path()).len() >= 4);
        log.truncate_suffix(10).unwrap();
        log.sync().unwrap();
        let files = segment_files(dir.path());
        let bases: Vec<Index> = files
            .iter()
            .map(|p| segment::parse_name(p.file_name().unwrap().to_str().unwrap()).unwrap())
            .collect();
        assert!(bases.iter().all(|&b| b <= 10), "{bases:?}");
    }
    let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!(contents(&log), expected(1..=9, 1));
    append_range(&mut log, 10..=40, 2);
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    let mut want = expected(1..=9, 1);
    want.extend(expected(10..=40, 2));
    assert_eq!(contents(&log), want);
}

/// Writes entries 1..=8, then cuts the segment at every offset from the start of record 5
/// to its end: reopen keeps exactly the records wholly before the cut, cuts the rest off
/// the file, and the log goes on from there.
#[test]
fn a_torn_tail_is_cut_at_every_offset() {
    let dir = TempDir::new("torn");
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        append_range(&mut log, 1..=8, 1);
        log.sync().unwrap();
    }
    let seg = segment_files(dir.path()).remove(0);
    let original = fs::read(&seg).unwrap();
    let starts = record_starts(&original);
    assert_eq!(starts.len(), 8);
    for cut in starts[4]..=original.len() {
        fs::write(&seg, &original[..cut]).unwrap();
        let mut log = FileLog::open(dir.path()).unwrap();
        let ends = starts[1..].iter().copied().chain([original.len()]);
        let whole = ends.filter(|&end| end <= cut).count();
        assert_eq!(
            contents(&log),
            expected(1..=whole as Index, 1),
            "cut at {cut}"
        );
        let boundary = starts.get(whole).copied().unwrap_or(original.len());
        match &log.recovery().tail_cut {
            None => assert_eq!(cut, boundary, "cut at {cut}"),
            Some(t) => {
                assert_eq!(
                    (t.offset, t.bytes),
                    (boundary as u64, (cut - boundary) as u64)
                );
                assert_eq!(t.file, seg);
            }
        }
        assert_eq!(fs::metadata(&seg).unwrap().len(), boundary as u64);
        // The log goes on after the cut.
        append(&mut log, whole as Index + 1, 2);
        log.sync().unwrap();
        drop(log);
        let log = FileLog::open(dir.path()).unwrap();
        assert_eq!(log.last_index(), whole as Index + 1);
        assert_eq!(log.term(whole as Index + 1), Some(2));
        assert_eq!(log.recovery().tail_cut, None);
    }
}

#[test]
fn a_preallocated_segment_is_written_in_place_and_its_zeros_are_the_end() {
    let dir = TempDir::new("prealloc");
    let log = open_preallocated(dir.path());
    let n = log.last_index();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2);
    let first = fs::read(&files[0]).unwrap();
    assert_eq!(
        record_starts(&first).len() as u64,
        log.disk_ref().segments[1].base - 1,
        "the first segment holds only records, no zeros"
    );
    assert_eq!(fs::metadata(&files[1]).unwrap().len(), 4096, "preallocated");
    let (starts, end) = records_before_zeros(&fs::read(&files[1]).unwrap());
    assert_eq!(starts.len(), 10);
    drop(log);

    // Reopened: the zeros are the end of the log, not a torn tail; writing goes on at the
    // end of the records, inside the preallocated space.
    let mut log = FileLog::open_with(dir.path(), preallocated()).unwrap();
    assert_eq!(contents(&log), expected(1..=n, 1));
    assert_eq!(log.recovery().tail_cut, None);
    assert_eq!(log.disk_ref().segments[1].len, end as u64);
    append_range(&mut log, n + 1..=n + 5, 2);
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open_with(dir.path(), preallocated()).unwrap();
    let mut want = expected(1..=n, 1);
    want.extend(expected(n + 1..=n + 5, 2));
    assert_eq!(contents(&log), want);
    assert_eq!(fs::metadata(&files[1]).unwrap().len(), 4096);
    assert!(temporary_files(dir.path()).is_empty());
}

#[test]
fn a_full_preallocated_segment_is_trimmed_when_the_next_one_starts() {
    let dir = TempDir::new("prealloc-roll");
    let mut log = open_preallocated(dir.path());
    let mut next = log.last_index() + 1;
    while log.disk_ref().segments.len() < 4 {
        append(&mut log, next, 1);
        log.sync().unwrap();
        log.wait_for_spare();
        next += 1;
    }
    assert!(log.stats().segments_preallocated >= 3);
    let files = segment_files(dir.path());
    for file in &files[..3] {
        let bytes = fs::read(file).unwrap();
        let ends = record_starts(&bytes);
        assert!(!ends.is_empty(), "{} holds records only", file.display());
    }
    drop(log);
    let log = FileLog::open_with(dir.path(), preallocated()).unwrap();
    assert_eq!(contents(&log), expected(1..=next - 1, 1));
    assert_eq!(log.recovery().tail_cut, None);
}

#[test]
fn a_torn_write_into_preallocated_space_is_cut_at_every_offset() {
    let dir = TempDir::new("prealloc-torn");
    let log = open_preallocated(dir.path());
    let n = log.last_index();
    let seg = log.disk_ref().segments[1].path.clone();
    drop(log);
    let original = fs::read(&seg).unwrap();
    let (starts, end) = records_before_zeros(&original);
    let last = *starts.last().unwrap();
    // A crash in the middle of the last write: a prefix of its bytes landed, the zeros of
    // the preallocated space follow.
    for landed in last..=end {
        let mut bytes = original.clone();
        bytes[landed..end].fill(0);
        fs::write(&seg, &bytes).unwrap();
        let mut log = FileLog::open_with(dir.path(), preallocated()).unwrap();
        // Bytes that are zeros anyway change nothing when they do not land.
        let intact = original[landed..end].iter().all(|&b| b == 0);
        let whole = if intact { n } else { n - 1 };
        assert_eq!(contents(&log), expected(1..=whole, 1), "landed {landed}");
        match &log.recovery().tail_cut {
            None => assert!(landed == last || intact, "landed {landed}"),
            Some(t) => assert_eq!(t.offset, last as u64, "landed {landed}"),
        }
        // The log goes on after the cut, and the cut bytes never come back.
        append(&mut log, whole + 1, 2);
        log.sync().unwrap();
        drop(log);
        let log = FileLog::open_with(dir.path(), preallocated()).unwrap();
        assert_eq!(log.last_index(), whole + 1, "landed {landed}");
        assert_eq!(log.term(whole + 1), Some(2));
        drop(log);
        fs::write(&seg, &original).unwrap();
    }
    // Damage before valid records is corruption, zeros after them or not.
    assert_damage_is_corruption(dir.path(), &seg, &original, starts[0]);
}

/// Flips a bit inside the record at `at` of segment `seg` (whose bytes are `bytes`), which
/// valid records follow: opening the log must refuse it, naming that record.
fn assert_damage_is_corruption(dir: &Path, seg: &Path, bytes: &[u8], at: usize) {
    let mut bytes = bytes.to_vec();
    bytes[at + 20] ^= 0x40;
    fs::write(seg, &bytes).unwrap();
    match FileLog::open_with(dir, preallocated()) {
        Err(FileLogError::Corrupt { offset, .. }) => assert_eq!(offset, at as u64),
        other => panic!("damage in the middle of {}: {other:?}", seg.display()),
    }
}

/// The entries a test wrote, as (index, term, data), from index 1.
type Written = Vec<(Index, Term, Vec<u8>)>;

/// Appends the next entry of `written` with `len` bytes of data in `term`.
fn append_next(log: &mut FileLog, written: &mut Written, term: Term, len: usize) {
    let index = written.len() as Index + 1;
    let d = data(index, len);
    append_command(log, index, term, &d);
    written.push((index, term, d));
}

/// Appends a command entry (the append must succeed).
fn append_command(log: &mut FileLog, index: Index, term: Term, data: &[u8]) {
    log.append(&Entry {
        index,
        term,
        kind: EntryKind::Command,
        data,
    })
    .unwrap();
}

/// What `log` should hold of `written` (from its first index).
fn kept(log: &FileLog, written: &Written) -> Written {
    written[log.first_index() as usize - 1..].to_vec()
}

/// Opens a log in `dir` whose active segment was recycled from a compacted one: it holds
/// a few synced records (data lengths from `len`), then old records of the segment it was.
fn open_recycled(dir: &Path, written: &mut Written, len: impl Fn(Index) -> usize) -> FileLog {
    let mut log = FileLog::open_with(dir, preallocated()).unwrap();
    while log.disk_ref().segments.len() < 3 {
        let next = written.len() as Index + 1;
        append_next(&mut log, written, 1, len(next));
        log.sync().unwrap();
    }
    // No spare of zeros in the way: the compacted segment becomes the spare.
    log.disk_mut().drop_spare();
    let through = log.disk_ref().segments[1].base - 1;
    log.compact(through).unwrap();
    assert!(matches!(&log.disk_ref().spare, Spare::Ready(s) if s.recycled));
    assert!(
        temporary_files(dir).len() == 1 && segment_files(dir).len() == 2,
        "renamed, not deleted"
    );
    while log.stats().segments_recycled == 0 {
        let next = written.len() as Index + 1;
        append_next(&mut log, written, 1, len(next));
        log.sync().unwrap();
    }
    for _ in 0..5 {
        let next = written.len() as Index + 1;
        append_next(&mut log, written, 1, len(next));
    }
    log.sync().unwrap();
    let active = log.disk_ref().segments.last().unwrap();
    assert!(active.preallocated);
    assert!(
        active.len < fs::metadata(&active.path).unwrap().len(),
        "old records follow"
    );
    log
}

/// The offsets of the records of a recycled segment file (entries from `base` on), and
/// where they end; checks that a record of the old segment starts somewhere after.
fn records_before_old_ones(bytes: &[u8], base: Index) -> (Vec<usize>, usize) {
    let mut at = segment::HEADER;
    let mut starts = Vec::new();
    while let Ok((payload, next)) = record::read_frame(bytes, at, 1 << 20) {
        if record::index_of(payload).unwrap() < base {
            break;
        }
        starts.push(at);
        at = next;
    }
    let old = record::find_valid_frame(bytes, at..bytes.len(), 1 << 20).unwrap();
    let (payload, _) = record::read_frame(bytes, old, 1 << 20).unwrap();
    assert!(record::index_of(payload).unwrap() < base);
    (starts, at)
}

#[test]
fn a_compacted_segment_is_recycled_and_its_old_records_are_the_end() {
    let dir = TempDir::new("recycle");
    let mut written = Written::new();
    // Records of one size: the new records end exactly where an old one starts, which
    // recovery must take for the end, not for an entry out of sequence.
    let log = open_recycled(dir.path(), &mut written, |_| 40);
    let seg = log.disk_ref().segments.last().unwrap().path.clone();
    let base = log.disk_ref().segments.last().unwrap().base;
    let end = log.disk_ref().segments.last().unwrap().len as usize;
    assert_eq!(log.stats().segments_recycled, 1);
    drop(log);
    let bytes = fs::read(&seg).unwrap();
    let (payload, _) = record::read_frame(&bytes, end, 1 << 20).unwrap();
    assert!(
        record::index_of(payload).unwrap() < base,
        "an old record at the end"
    );

    let mut log = FileLog::open_with(dir.path(), preallocated()).unwrap();
    assert_eq!(contents(&log), kept(&log, &written));
    assert_eq!(log.recovery().tail_cut, None);
    assert_eq!(log.disk_ref().segments.last().unwrap().len, end as u64);
    assert!(log.disk_ref().segments.last().unwrap().preallocated);
    // Writing goes on over the old records, in a newer term, and survives a reopen.
    for len in [3, 90, 0] {
        append_next(&mut log, &mut written, 2, len);
    }
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open_with(dir.path(), preallocated()).unwrap();
    assert_eq!(contents(&log), kept(&log, &written));
    assert_eq!(log.recovery().tail_cut, None);
    assert!(temporary_files(dir.path()).is_empty());
}

#[test]
fn a_torn_write_into_a_recycled_segment_ends_the_log_at_every_offset() {
    let dir = TempDir::new("recycle-torn");
    let mut written = Written::new();
    let mut log = open_recycled(dir.path(), &mut written, |i| (i % 7) as usize * 5);
    let seg = log.disk_ref().segments.last().unwrap().path.clone();
    let base = log.disk_ref().segments.last().unwrap().base;
    let before = fs::read(&seg).unwrap();
    // The last write: two records.
    append_next(&mut log, &mut written, 1, 33);
    append_next(&mut log, &mut written, 1, 12);
    log.sync().unwrap();
    drop(log);
    let after = fs::read(&seg).unwrap();
    let (starts, end) = records_before_old_ones(&after, base);
    let (first_of_write, second) = (starts[starts.len() - 2], starts[starts.len() - 1]);
    let n = written.len();
    // A crash in the middle of the last write: a prefix of its bytes landed, the old
    // records of the recycled segment (as they were before the write) follow.
    for landed in first_of_write..=end {
        let mut bytes = after[..landed].to_vec();
        bytes.extend_from_slice(&before[landed..]);
        fs::write(&seg, &bytes).unwrap();
        let mut log = FileLog::open_with(dir.path(), preallocated()).unwrap();
        let whole = if landed == end {
            n
        } else if landed >= second {
            n - 1
        } else {
            n - 2
        };
        assert_eq!(
            contents(&log),
            kept(&log, &written[..whole].to_vec()),
            "landed {landed}"
        );
        assert_eq!(log.recovery().tail_cut, None, "landed {landed}");
        // The log goes on over the torn bytes, and they never come back.
        let mut now = written[..whole].to_vec();
        append_next(&mut log, &mut now, 2, 7);
        log.sync().unwrap();
        drop(log);
        let log = FileLog::open_with(dir.path(), preallocated()).unwrap();
        assert_eq!(contents(&log), kept(&log, &now), "landed {landed}");
        drop(log);
        fs::write(&seg, &after).unwrap();
    }
    // Damage before valid records of the segment is corruption, old records after or not.
    assert_damage_is_corruption(dir.path(), &seg, &after, starts[1]);
}

#[test]
fn entries_cut_inside_preallocated_space_never_come_back() {
    let dir = TempDir::new("prealloc-truncate");
    let mut log = open_preallocated(dir.path());
    let n = log.last_index();
    log.truncate_suffix(n - 5).unwrap();
    append_range(&mut log, n - 5..=n - 4, 2);
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open_with(dir.path(), preallocated()).unwrap();
    let mut want = expected(1..=n - 6, 1);
    want.extend(expected(n - 5..=n - 4, 2));
    assert_eq!(contents(&log), want);
    assert_eq!(log.recovery().tail_cut, None);
}

/// A preallocated segment's flushes write no durability mark (their `fdatasync` writes the
/// records' pages only): the size its mark says tells a cut instead. Cut anywhere in its
/// records or its zeros, open refuses it, naming the file and the first entry that may be
/// lost, and changes nothing; whole again, it opens with every entry.
#[test]
fn a_preallocated_segment_cut_short_is_refused_and_its_flushes_write_no_mark() {
    let dir = TempDir::new("prealloc-cut-short");
    let log = open_preallocated(dir.path());
    let n = log.last_index();
    assert!(
        log.disk_ref().segments[0].mark.unwrap().seq > 0,
        "the first segment, not preallocated, has marks of its flushes"
    );
    let active = &log.disk_ref().segments[1];
    let (seg, base, mark) = (active.path.clone(), active.base, active.mark.unwrap());
    let size = fs::metadata(&seg).unwrap().len();
    assert_eq!(
        (mark.seq, mark.durable, mark.allocated),
        (0, base - 1, size),
        "no mark written since the segment was made"
    );
    drop(log);
    let original = fs::read(&seg).unwrap();
    let (starts, end) = records_before_zeros(&original);
    let ends: Vec<usize> = starts[1..].iter().copied().chain([end]).collect();
    let cuts = (segment::HEADER..end)
        .step_by(7)
        .chain(starts.iter().copied())
        .chain([end, end + 1, original.len() - 1]);
    for cut in cuts {
        fs::write(&seg, &original[..cut]).unwrap();
        let from = base + ends.iter().filter(|&&e| e <= cut).count() as Index;
        let e = FileLog::open_with(dir.path(), preallocated()).unwrap_err();
        let FileLogError::Damaged {
            damage:
                Damage::CutShort {
                    ref file,
                    len,
                    allocated,
                    from: said,
                },
            ..
        } = e
        else {
            panic!("cut at {cut}: {e}");
        };
        assert_eq!(
            (file, len, allocated, said),
            (&seg, cut as u64, size, from),
            "cut at {cut}"
        );
        let text = e.to_string();
        assert!(
            text.contains("cut short")
                && text.contains(&format!("entries from {from} on may be lost"))
                && text.contains("add-learner"),
            "{text}"
        );
        assert_eq!(fs::read(&seg).unwrap(), &original[..cut], "nothing is cut");
    }
    fs::write(&seg, &original).unwrap();
    let log = FileLog::open_with(dir.path(), preallocated()).unwrap();
    assert_eq!(contents(&log), expected(1..=n, 1));
}

/// A crash at any step of a roll-over (the old segment trimmed, the next one created, the
/// old one sealed) leaves a log that opens with every entry synced: never a sealed last
/// segment, nor one shorter than its mark says. The active segment is made from a spare of
/// zeros or recycled from a compacted one, and ends inside its allocated size (the
/// configured segment size went down), so its trim makes the file shorter. (The old segment used to be sealed
/// before the next one existed: a crash between the two looked like a deleted segment,
/// and the node refused to start.)
#[test]
fn a_crash_at_any_step_of_a_roll_over_loses_nothing() {
    for recycled in [false, true] {
        for step in [Some("trimmed"), Some("next-created"), None] {
            let dir = TempDir::new("roll-over-crash");
            let mut written = Written::new();
            let log = if recycled {
                open_recycled(dir.path(), &mut written, |i| (i % 7) as usize * 5)
            } else {
                let log = open_preallocated(dir.path());
                written = expected(1..=log.last_index(), 1);
                log
            };
            // Segments half as long from now on: the active one ends well inside its
            // allocated size, and its trim takes the file below it.
            drop(log);
            let mut log =
                FileLog::open_with(dir.path(), preallocated().segment_bytes(2048)).unwrap();
            let segments = log.disk_ref().segments.len();
            let active = &log.disk_ref().segments[segments - 1];
            let allocated = active.allocated();
            assert_eq!(allocated, fs::metadata(&active.path).unwrap().len());
            log.crash_at(step);
            // Until the segment is full: the sync that rolls over stops at `step`.
            let mut synced = written.len() as Index;
            while log.disk_ref().segments.len() == segments {
                let len = (synced + 1) % 7 * 5;
                append_next(&mut log, &mut written, 1, len as usize);
                if log.sync().is_err() {
                    assert!(step.is_some());
                    break;
                }
                synced += 1;
            }
            drop(log);
            let at = format!("recycled {recycled}, crash at {step:?}");
            let log = FileLog::open_with(dir.path(), preallocated())
                .unwrap_or_else(|e| panic!("{at}: {e}"));
            assert!(log.last_index() >= synced, "{at}");
            written.truncate(log.last_index() as usize);
            assert_eq!(contents(&log), kept(&log, &written), "{at}");
            let segs = &log.disk_ref().segments;
            let old = &segs[segments - 1];
            let len = fs::metadata(&old.path).unwrap().len();
            assert_eq!(
                (segs.len() > segments, old.mark.unwrap().sealed),
                (step != Some("trimmed"), step.is_none()),
                "{at}"
            );
            assert!(old.allocated() <= len, "{at}");
            if step.is_some() {
                assert!(
                    len < allocated,
                    "{at}: the trim went below the allocated size"
                );
            }
        }
    }
}

/// A snapshot that replaces a log whose last segment is preallocated and partly filled:
/// a crash right after that segment is trimmed (shorter than its allocated size, before
/// the log's next segment exists) leaves the new state, which opens, never one taken for
/// a file cut short.
#[test]
fn a_crash_after_trimming_for_a_snapshot_leaves_a_log_that_opens() {
    let dir = TempDir::new("discard-trim-crash");
    let mut log = open_preallocated(dir.path());
    let n = log.last_index();
    let m = SnapshotMeta::new(n + 50, 3, CONFIG).unwrap();
    receive(&mut log, &m, &state_bytes(300, 3), 128);
    log.crash_at(Some("trimmed"));
    assert!(log.install_snapshot(&m).is_err());
    drop(log);
    let mut log = FileLog::open_with(dir.path(), preallocated())
        .unwrap_or_else(|e| panic!("after the crash: {e}"));
    assert_eq!(
        (log.snapshot_point(), log.last_index()),
        (Some((n + 50, 3)), n + 50)
    );
    append(&mut log, n + 51, 3);
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open_with(dir.path(), preallocated()).unwrap();
    assert_eq!(log.term(n + 51), Some(3));
}

/// A directory of the previous format (2: segments whose marks say no allocated size) is
/// upgraded in place: its segments are read, and written to with marks of their own
/// version (a cut below one is still caught); the segments it gets next are version 3.
#[test]
fn a_format_2_directory_is_upgraded_and_its_segments_keep_their_marks() {
    let dir = TempDir::new("format-2");
    let one_segment = Options::new().segment_bytes(4096).preallocate(false);
    {
        let mut log = FileLog::open_with(dir.path(), one_segment.clone()).unwrap();
        append_range(&mut log, 1..=40, 1);
        log.sync().unwrap();
    }
    // As the previous release left it.
    let seg = segment_files(dir.path()).pop().unwrap();
    fs::write(&seg, segment::as_version_2(&fs::read(&seg).unwrap())).unwrap();
    let marker = dir.path().join(format::FILE);
    let mut b = fs::read(&marker).unwrap();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&b[..12]);
    b[12..].copy_from_slice(&crc.to_le_bytes());
    fs::write(&marker, b).unwrap();

    let mut log = FileLog::open_with(dir.path(), one_segment.clone()).unwrap();
    assert_eq!(log.recovery().upgraded_from, Some(2));
    assert_eq!(format::read(dir.path()).unwrap(), format::CURRENT);
    assert_eq!(contents(&log), expected(1..=40, 1));
    assert_eq!(log.disk_ref().segments[0].version, segment::MARKS_VERSION);
    for i in 41..=43 {
        append(&mut log, i, 2);
        log.sync().unwrap();
    }
    drop(log);
    let bytes = fs::read(&seg).unwrap();
    let header = segment::decode_header(&bytes, &seg).unwrap();
    assert_eq!(header.version, segment::MARKS_VERSION);
    assert_eq!(header.mark.map(|m| (m.durable, m.allocated)), Some((42, 0)));
    // Entry 40 on cut off: entries up to the mark are named lost.
    let mut at = header.records_start;
    for _ in 1..40 {
        at = record::read_frame(&bytes, at, 1 << 20).unwrap().1;
    }
    fs::write(&seg, &bytes[..at]).unwrap();
    assert_eq!(
        damage(dir.path(), one_segment),
        Damage::LostEntries {
            file: seg.clone(),
            from: 40,
            to: 42
        }
    );
    fs::write(&seg, &bytes).unwrap();
    // Small segments: the next entry starts a new segment, of version 3.
    let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    append(&mut log, 44, 2);
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    let mut want = expected(1..=40, 1);
    want.extend(expected(41..=44, 2));
    assert_eq!(contents(&log), want);
    let segs = &log.disk_ref().segments;
    assert_eq!(
        segs.iter().map(|s| s.version).collect::<Vec<_>>(),
        [segment::MARKS_VERSION, segment::SEGMENT_VERSION]
    );
    assert!(
        segs[0].mark.unwrap().sealed,
        "the version 2 segment is sealed"
    );
}

#[test]
fn a_spare_is_not_left_behind_when_the_log_is_dropped() {
    let dir = TempDir::new("spare-drop");
    // Ready and unused.
    let mut log = FileLog::open_with(dir.path(), preallocated()).unwrap();
    while matches!(log.disk_ref().spare, Spare::None) {
        let next = log.last_index() + 1;
        append(&mut log, next, 1);
        log.sync().unwrap();
    }
    assert!(log.wait_for_spare());
    assert_eq!(temporary_files(dir.path()).len(), 1);
    drop(log);
    assert!(temporary_files(dir.path()).is_empty());
    // Being written (1 GiB of zeros would take seconds): cancelled and removed.
    let options = Options::new().segment_bytes(1 << 30);
    let mut log = FileLog::open_with(dir.path(), options).unwrap();
    let big = vec![7u8; 64 << 10];
    for index in log.last_index() + 1..=log.last_index() + 17 {
        let e = Entry {
            index,
            term: 1,
            kind: EntryKind::Command,
            data: &big,
        };
        log.append(&e).unwrap();
    }
    log.sync().unwrap();
    assert!(matches!(log.disk_ref().spare, Spare::Preparing { .. }));
    drop(log);
    assert!(temporary_files(dir.path()).is_empty());
}

/// Opens `dir`, retrying for a moment while its lock is held: another test of this process
/// that spawns a program (`chattr`) briefly holds copies of every descriptor, this log's
/// lock included, between its fork and its exec.
fn open_retrying_lock(dir: &Path) -> Result<FileLog, FileLogError> {
    for _ in 0..100 {
        match FileLog::open(dir) {
            Err(FileLogError::Locked(_)) => std::thread::sleep(std::time::Duration::from_millis(5)),
            other => return other,
        }
    }
    FileLog::open(dir)
}

/// Flips one byte at every offset of the last three records: in the last record it is a
/// torn tail; anywhere before, a clear error naming the file and the record's offset.
#[test]
fn a_flipped_byte_is_a_torn_tail_only_in_the_last_record() {
    let dir = TempDir::new("flip");
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        append_range(&mut log, 1..=6, 1);
        log.sync().unwrap();
    }
    let seg = segment_files(dir.path()).remove(0);
    let original = fs::read(&seg).unwrap();
    let starts = record_starts(&original);
    let last = starts[5];
    // The header and the mark in use (slot 0: one sync wrote these records, so the mark
    // was never rewritten); slot 1 is unused, a flip there changes nothing.
    let unused = segment::FIXED + segment::MARK..segment::HEADER;
    for offset in (0..segment::HEADER).chain(starts[3]..original.len()) {
        if unused.contains(&offset) {
            continue;
        }
        for mask in [0x01u8, 0xff] {
            let mut bad = original.clone();
            bad[offset] ^= mask;
            fs::write(&seg, &bad).unwrap();
            match open_retrying_lock(dir.path()) {
                Ok(log) => {
                    assert!(offset >= last, "flip at {offset} was accepted");
                    assert_eq!(contents(&log), expected(1..=5, 1));
                    let cut = log.recovery().tail_cut.clone().unwrap();
                    assert_eq!(cut.offset, last as u64);
                }
                Err(e) => {
                    assert!(offset < last, "flip at {offset} in the last record: {e}");
                    let FileLogError::Corrupt {
                        file, offset: at, ..
                    } = &e
                    else {
                        panic!("flip at {offset}: {e}");
                    };
                    assert_eq!(file, &seg);
                    let record = starts.iter().rev().find(|&&s| s <= offset).copied();
                    if offset >= segment::HEADER {
                        assert_eq!(*at, record.unwrap() as u64, "flip at {offset}: {e}");
                    }
                    let text = e.to_string();
                    assert!(text.contains(&seg.display().to_string()), "{text}");
                    assert!(text.contains(&format!("offset {at}")), "{text}");
                }
            }
        }
    }
}

#[test]
fn damage_in_an_earlier_segment_is_an_error() {
    let dir = TempDir::new("flip-earlier");
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        append_range(&mut log, 1..=40, 1);
        log.sync().unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let first = &files[0];
    let original = fs::read(first).unwrap();
    let starts = record_starts(&original);
    let last_record = *starts.last().unwrap();

    // A flipped byte in its last record.
    let mut bad = original.clone();
    bad[last_record + 14] ^= 0x40;
    fs::write(first, &bad).unwrap();
    let e = FileLog::open_with(dir.path(), small_segments()).unwrap_err();
    assert!(
        matches!(&e, FileLogError::Corrupt { file, offset, .. } if file == first && *offset == last_record as u64),
        "{e}"
    );
    assert!(e.to_string().contains("not the last"), "{e}");

    // A torn end of a segment that is not the last is damage too.
    fs::write(first, &original[..original.len() - 3]).unwrap();
    let e = FileLog::open_with(dir.path(), small_segments()).unwrap_err();
    assert!(
        matches!(&e, FileLogError::Corrupt { file, .. } if file == first),
        "{e}"
    );

    // A missing middle segment: the next one does not follow.
    fs::write(first, &original).unwrap();
    fs::remove_file(&files[1]).unwrap();
    let e = FileLog::open_with(dir.path(), small_segments()).unwrap_err();
    assert!(
        matches!(&e, FileLogError::Corrupt { file, .. } if file == &files[2]),
        "{e}"
    );
}

/// A segment whose (checksummed) header says it starts at index 0, where no entry is: an
/// error naming the file, not an arithmetic overflow while the log is read back.
#[test]
fn a_segment_that_starts_at_index_0_is_an_error() {
    let dir = TempDir::new("base-0");
    // A new log: its one segment holds no record yet, so no entry index contradicts the
    // header.
    drop(FileLog::open_with(dir.path(), small_segments()).unwrap());
    let files = segment_files(dir.path());
    let mut bytes = fs::read(&files[0]).unwrap();
    bytes[12..20].copy_from_slice(&0u64.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::remove_file(&files[0]).unwrap();
    let zero = dir.path().join(segment::name(0));
    fs::write(&zero, &bytes).unwrap();
    let e = FileLog::open_with(dir.path(), small_segments()).unwrap_err();
    assert!(
        matches!(&e, FileLogError::Corrupt { file, .. } if file == &zero),
        "{e}"
    );
}

#[test]
fn a_torn_hard_state_write_is_ignored() {
    let dir = TempDir::new("hard-state");
    let hs = HardState {
        current_term: 2,
        voted_for: Some(1),
    };
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        log.set_hard_state(hs).unwrap();
        log.sync().unwrap();
    }
    // A crash while writing the next hard state: the temporary file is half written.
    let tmp = dir.path().join("hard_state.tmp");
    fs::write(&tmp, b"CORAHARD\x01\x00").unwrap();
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(log.hard_state(), hs);
    assert_eq!(log.recovery().leftovers_removed, vec![tmp.clone()]);
    assert!(!tmp.exists());
    drop(log);

    // The file in place damaged: an error, not a silent term 0.
    let path = dir.path().join(hard_state::FILE);
    let mut bytes = fs::read(&path).unwrap();
    bytes[13] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let e = FileLog::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, FileLogError::Corrupt { file, .. } if file == &path),
        "{e}"
    );
}

#[test]
fn a_snapshot_is_atomic_and_is_the_compaction_point() {
    let dir = TempDir::new("snapshot");
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        assert_eq!(log.load_snapshot().unwrap(), None);
        append_range(&mut log, 1..=20, 1);
        log.sync().unwrap();
        save(&mut log, 10, 1, b"state at 10").unwrap();
        assert_eq!(log.first_index(), 1, "the host decides when to compact");
        assert_eq!(log.snapshot_point(), Some((10, 1)));
        assert!(matches!(
            save(&mut log, 9, 1, b"older"),
            Err(FileLogError::StaleSnapshot {
                index: 9,
                saved: 10
            })
        ));
    }
    // A crash while writing a newer snapshot.
    fs::write(dir.path().join(snapshot::saving(1)), b"CORASNAP half").unwrap();
    let log = FileLog::open(dir.path()).unwrap();
    let snap = log.load_snapshot().unwrap().unwrap();
    assert_eq!(
        snap,
        Snapshot {
            meta: meta(10, 1, b"state at 10"),
            size: 11,
        }
    );
    assert_eq!((log.first_index(), log.last_index()), (11, 20));
    assert_eq!(log.term(10), Some(1));
    assert_eq!(contents(&log), expected(11..=20, 1));
    drop(log);

    // A damaged snapshot in place is an error.
    let path = dir.path().join(snapshot::FILE);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let e = FileLog::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, FileLogError::Corrupt { file, .. } if file == &path),
        "{e}"
    );
}

#[test]
fn a_snapshot_written_on_another_thread_is_kept_by_its_batch() {
    let dir = TempDir::new("snapshot-steps");
    let mut log = FileLog::open(dir.path()).unwrap();
    append_range(&mut log, 1..=30, 1);
    log.sync().unwrap();
    // Written in pieces on another thread while the log goes on, then kept.
    let mut w = log.snapshot_writer(&meta(10, 1, b"")).unwrap();
    let written = std::thread::spawn(move || {
        for piece in [&b"at "[..], b"10"] {
            w.write_all(piece).unwrap();
        }
        FileLog::finish_snapshot(w)
    })
    .join()
    .unwrap();
    written.unwrap();
    append_range(&mut log, 31..=32, 1);
    log.sync().unwrap();
    assert_eq!(log.snapshot_point(), None, "not kept before its batch");
    let kept = meta(10, 1, b"");
    log.persist(&Batch {
        snapshot: Some(SnapshotWrite::Taken(&kept)),
        ..batch()
    });
    log.sync().unwrap();
    assert_eq!(log.snapshot_point(), Some((10, 1)));
    assert_eq!(log.snapshot_bytes().unwrap(), b"at 10");

    // The node says another configuration than the host guessed: the file is rewritten
    // with the node's metadata.
    let guessed = meta(20, 1, b"");
    let mut w = log.snapshot_writer(&guessed).unwrap();
    w.write_all(b"at 20").unwrap();
    FileLog::finish_snapshot(w).unwrap();
    let said = SnapshotMeta::new(20, 1, &[1, 0, 0, 0, 0, 0, 0, 0, 1]).unwrap();
    log.persist(&Batch {
        snapshot: Some(SnapshotWrite::Taken(&said)),
        ..batch()
    });
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(log.snapshot().map(|s| s.meta), Some(said));
    assert_eq!(log.snapshot_bytes().unwrap(), b"at 20");
    drop(log);

    // A writer given up removes its file; a crash between the seal and the batch leaves a
    // temporary file that open removes: the snapshot kept before is the one found.
    let mut log = FileLog::open(dir.path()).unwrap();
    let mut w = log.snapshot_writer(&meta(24, 1, b"")).unwrap();
    w.write_all(b"half").unwrap();
    drop(w);
    assert!(temporary_files(dir.path()).is_empty());
    let mut w = log.snapshot_writer(&meta(25, 1, b"")).unwrap();
    w.write_all(b"at 25").unwrap();
    FileLog::finish_snapshot(w).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(log.snapshot_point(), Some((20, 1)));
    assert_eq!(
        log.recovery().leftovers_removed,
        vec![dir.path().join(snapshot::saving(25))]
    );
    assert!(
        log.recovery().leftovers[0].what.contains("index 25"),
        "{:?}",
        log.recovery().leftovers
    );
    assert_eq!(log.last_index(), 32);
}

#[test]
fn a_snapshot_the_log_does_not_hold_discards_the_log() {
    let dir = TempDir::new("snapshot-discard");
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        append_range(&mut log, 1..=5, 1);
        log.sync().unwrap();
        // Installed from a leader, past the end of the log.
        save(&mut log, 50, 3, b"s50").unwrap();
        assert_eq!(
            (log.first_index(), log.last_index(), log.term(50)),
            (51, 50, Some(3))
        );
        append_range(&mut log, 51..=52, 3);
        log.sync().unwrap();
    }
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        assert_eq!(contents(&log), expected(51..=52, 3));
        assert!(!log.recovery().discarded_by_snapshot);
        // A snapshot in conflict with the log (same index, other term).
        save(&mut log, 52, 4, b"s52").unwrap();
        assert_eq!((log.first_index(), log.last_index()), (53, 52));
    }
    // A crash between saving a snapshot and discarding the log: open finishes the job.
    snapshot::write(dir.path(), &meta(60, 5, b"s60"), b"s60").unwrap();
    let log = FileLog::open(dir.path()).unwrap();
    assert!(log.recovery().discarded_by_snapshot);
    assert_eq!(
        (log.first_index(), log.last_index(), log.term(60)),
        (61, 60, Some(5))
    );
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn compaction_deletes_whole_segments_and_survives_reopen() {
    let dir = TempDir::new("compact");
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        append_range(&mut log, 1..=100, 1);
        log.sync().unwrap();
        let before = segment_files(dir.path());
        log.compact(50).unwrap();
        assert_eq!(log.first_index(), 51);
        assert_eq!(log.term(50), Some(1));
        let after = segment_files(dir.path());
        assert!(after.len() < before.len());
        let bases: Vec<Index> = after
            .iter()
            .map(|p| segment::parse_name(p.file_name().unwrap().to_str().unwrap()).unwrap())
            .collect();
        assert!(bases[0] <= 51 && bases[1] > 51, "{bases:?}");
        for p in before.iter().filter(|p| !after.contains(p)) {
            let base = segment::parse_name(p.file_name().unwrap().to_str().unwrap()).unwrap();
            assert!(base < bases[0]);
        }
        assert_eq!(
            log.stats().segments_deleted,
            (before.len() - after.len()) as u64
        );
    }
    let mut first_kept = 0;
    {
        // No snapshot: the log starts at the first segment kept.
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        first_kept = first_kept.max(log.first_index());
        assert!(log.first_index() <= 51);
        assert_eq!(contents(&log), expected(log.first_index()..=100, 1));
        save(&mut log, 50, 1, b"s").unwrap();
    }
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (51, 100));
    assert_eq!(contents(&log), expected(51..=100, 1));
    assert!(first_kept > 1);
}

#[test]
fn the_data_directory_is_locked() {
    let dir = TempDir::new("lock");
    let log = FileLog::open(dir.path()).unwrap();
    let e = FileLog::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, FileLogError::Locked(p) if p == &dir.path().join("LOCK")),
        "{e}"
    );
    assert!(e.to_string().contains("in use"), "{e}");
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::ResourceBusy);
    drop(log);
    FileLog::open(dir.path()).unwrap();
}

/// The bytes after an index (a follower's lag) count the records of every entry after it:
/// written, queued, or in the flush job running, which holds them neither in the queue nor
/// yet in the positions.
#[test]
fn bytes_after_counts_the_records_of_a_flush_under_way() {
    let dir = TempDir::new("bytes-after");
    let mut log = FileLog::open(dir.path()).unwrap();
    append_range(&mut log, 1..=10, 1);
    let queued = log.bytes_after(3);
    assert!(queued > 0);
    let job = log.begin_flush().unwrap().unwrap();
    assert_eq!(log.bytes_after(3), queued, "while the job runs");
    let done = job.run();
    assert_eq!(log.bytes_after(3), queued, "written, not yet taken back");
    log.end_flush(done).unwrap();
    assert_eq!(log.bytes_after(3), queued, "once durable");
    append_range(&mut log, 11..=12, 1);
    let job = log.begin_flush().unwrap().unwrap();
    let more = log.bytes_after(3);
    assert!(more > queued, "{more} after two more");
    log.end_flush(job.run()).unwrap();
    assert_eq!(log.bytes_after(3), more);
    assert_eq!(log.bytes_after(12), 0);
}

/// A node that shuts down on a disk that hangs gives up its last flush job and drops its
/// log: the directory stays locked until the job is done with the files, so nothing opens
/// it while a stale write may still land in it.
#[test]
fn a_flush_job_that_outlives_its_log_keeps_the_directory_locked() {
    let dir = TempDir::new("lock-job");
    let mut log = FileLog::open(dir.path()).unwrap();
    append_range(&mut log, 1..=10, 1);
    let job = log.begin_flush().unwrap().expect("batches were queued");
    drop(log);
    let e = FileLog::open(dir.path()).unwrap_err();
    assert!(matches!(e, FileLogError::Locked(_)), "{e}");
    // The disk answers at last: the job writes what it took, then lets go.
    drop(job.run());
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(contents(&log), expected(1..=10, 1));
}

/// Makes a directory read-only for the rest of the test: `chmod 0555`, or for root (whom
/// permissions do not stop) the immutable attribute. `None` if neither works here.
struct ReadOnly(PathBuf, bool);

impl ReadOnly {
    fn make(dir: &Path) -> Option<ReadOnly> {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).ok()?;
        let mut guard = ReadOnly(dir.to_path_buf(), false);
        if writable(dir) {
            let immutable = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .output()
                .is_ok_and(|o| o.status.success());
            guard.1 = immutable;
            if !immutable || writable(dir) {
                return None;
            }
        }
        Some(guard)
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let ok = File::create(&probe).is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.1 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .output();
        }
        let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn a_read_only_directory_is_a_clear_error() {
    let fresh = TempDir::new("read-only-fresh");
    fs::create_dir_all(fresh.path()).unwrap();
    let used = TempDir::new("read-only-used");
    {
        let mut log = FileLog::open(used.path()).unwrap();
        append_range(&mut log, 1..=3, 1);
        log.sync().unwrap();
    }
    let Some(_guard_fresh) = ReadOnly::make(fresh.path()) else {
        println!(
            "note: skipped: cannot make a read-only directory here (root ignores chmod and chattr +i failed)"
        );
        return;
    };
    let _guard_used = ReadOnly::make(used.path()).unwrap();

    // A new log cannot even take its lock.
    let e = FileLog::open(fresh.path()).unwrap_err();
    assert!(matches!(&e, FileLogError::Io { .. }), "{e}");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("LOCK") && text.contains("read-only"),
        "{text}"
    );

    // An existing log opens (its files are writable), but the first new file fails, the
    // failure is clear, and the log takes no more writes.
    let mut log = FileLog::open(used.path()).unwrap();
    assert_eq!(log.last_index(), 3);
    log.set_hard_state(HardState {
        current_term: 5,
        voted_for: None,
    })
    .unwrap();
    let e = log.sync().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("hard_state.tmp"), "{e}");
    assert!(log.is_failed());
    assert!(matches!(log.last_error(), Some(FileLogError::Io { .. })));
    assert_eq!(
        log.append(&Entry {
            index: 4,
            term: 5,
            kind: EntryKind::Command,
            data: b""
        }),
        Err(StorageError::Unavailable)
    );
    assert!(log.sync().is_err());
}

/// The quota counts the records of the flush under way: they are neither queued nor yet
/// in the disk's count, and appends made while the job runs must not go past the quota.
#[test]
fn the_quota_counts_the_records_of_a_flush_under_way() {
    let dir = TempDir::new("full-flushing");
    let options = small_segments()
        .max_entry_bytes(100)
        .max_log_bytes(Some(MIN_LOG_BYTES));
    let mut log = FileLog::open_with(dir.path(), options).unwrap();
    let mut next = 1;
    let entry = |index| Entry {
        index,
        term: 1,
        kind: EntryKind::Command,
        data: &[7u8; 20],
    };
    // Half the quota in one batch, as a leader queues it (a host checks the room first).
    while log.disk_bytes() < MIN_LOG_BYTES / 2 {
        log.check_room(EntryKind::Command, 20).unwrap();
        let one = [entry(next)];
        log.persist(&Batch {
            entries: Entries::from_slice(&one),
            ..batch()
        });
        next += 1;
    }
    let mut append = |log: &mut FileLog| {
        let appended = log.append(&entry(next));
        next += appended.is_ok() as u64;
        assert!(next < 1000);
        appended
    };
    let queued = log.disk_bytes();
    let job = log.begin_flush().unwrap().unwrap();
    assert_eq!(log.disk_bytes(), queued, "while the job runs");
    while append(&mut log).is_ok() {}
    // What the files will hold: the job's records and those queued meanwhile.
    let records = queued + log.pending_bytes() as u64;
    assert!(
        records <= MIN_LOG_BYTES - 1024,
        "{records} bytes of records for a quota of {MIN_LOG_BYTES} less 1024 kept back"
    );
    log.end_flush(job.run()).unwrap();
    log.sync().unwrap();
}

/// A real full disk cannot be made here without mounting a file system, so the quota option
/// stands in for it: past it an append is `Full` (the node pushes back) and compaction makes
/// room. A real `ENOSPC` surfaces as an I/O error; its text is checked below.
#[test]
fn a_full_log_is_a_clear_error_and_compaction_makes_room() {
    let dir = TempDir::new("full");
    let options = small_segments()
        .max_entry_bytes(100)
        .max_log_bytes(Some(MIN_LOG_BYTES));
    let mut log = FileLog::open_with(dir.path(), options).unwrap();
    let mut next = 1;
    loop {
        let d = [7u8; 20];
        match log.append(&Entry {
            index: next,
            term: 1,
            kind: EntryKind::Command,
            data: &d,
        }) {
            Ok(()) => next += 1,
            Err(e) => {
                assert_eq!(e, StorageError::Full);
                break;
            }
        }
        assert!(next < 1000);
    }
    log.sync().unwrap();
    assert!(log.disk_bytes() <= MIN_LOG_BYTES - 1024);
    let e = log.last_error().unwrap();
    assert!(
        matches!(
            e,
            FileLogError::QuotaExceeded {
                limit: MIN_LOG_BYTES,
                reserved: 1024,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("full"), "{e}");
    // The reserve takes a new leader's no-op and a configuration change, until it is full
    // too.
    for kind in [EntryKind::Noop, EntryKind::Membership] {
        let e = Entry {
            index: next,
            term: 2,
            kind,
            data: if kind == EntryKind::Noop {
                b""
            } else {
                b"conf"
            },
        };
        log.append(&e).unwrap();
        next += 1;
    }
    loop {
        let e = Entry {
            index: next,
            term: 2,
            kind: EntryKind::Noop,
            data: b"",
        };
        match log.append(&e) {
            Ok(()) => next += 1,
            Err(e) => {
                assert_eq!(e, StorageError::Full);
                break;
            }
        }
        assert!(next < 1000);
    }
    assert!(log.disk_bytes() <= MIN_LOG_BYTES);
    log.sync().unwrap();
    assert!(
        !log.is_failed(),
        "a full log is back-pressure, not a failure"
    );
    log.compact(next - 2).unwrap();
    log.append(&Entry {
        index: next,
        term: 2,
        kind: EntryKind::Command,
        data: b"room again",
    })
    .unwrap();
    log.sync().unwrap();

    let enospc = FileLogError::Io {
        path: dir.path().join("00000000000000000001.seg"),
        op: "write segment",
        source: io::Error::from_raw_os_error(28),
    };
    assert_eq!(enospc.kind(), io::ErrorKind::StorageFull);
    let text = enospc.to_string();
    assert!(
        text.contains("write segment") && text.contains(".seg") && text.contains("disk is full"),
        "{text}"
    );
}

#[test]
fn a_quota_compaction_cannot_get_under_is_refused() {
    // The report's settings, scaled down: one segment is larger than the whole quota, so
    // the first segment never ends, compaction never deletes it, and the log stays full.
    let options = small_segments()
        .segment_bytes(64 << 10)
        .max_entry_bytes(1000)
        .max_log_bytes(Some(MIN_LOG_BYTES));
    let dir = TempDir::new("quota-small");
    let e = FileLog::open_with(dir.path(), options.clone()).unwrap_err();
    let least = options.min_log_bytes();
    assert!(
        matches!(e, FileLogError::QuotaTooSmall { limit: MIN_LOG_BYTES, least: l, .. } if l == least),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains(&format!("at least {least} bytes")), "{text}");
    assert!(
        !dir.path().exists(),
        "nothing is created for refused options"
    );
    // The smallest quota named works; one byte less does not; nor does a quota that
    // leaves no room for a no-op, whatever the segments.
    assert!(options.clone().max_log_bytes(Some(least)).check().is_ok());
    assert!(options
        .clone()
        .max_log_bytes(Some(least - 1))
        .check()
        .is_err());
    let tiny = small_segments().segment_bytes(1).max_entry_bytes(1);
    assert!(tiny.clone().max_log_bytes(Some(1)).check().is_err());
    assert!(tiny
        .clone()
        .max_log_bytes(Some(MIN_LOG_BYTES))
        .check()
        .is_ok());
    // The largest segments named for a quota work with it.
    let quota = 1 << 20;
    let s = options.max_segment_bytes_for(quota).unwrap();
    assert!(options
        .clone()
        .segment_bytes(s)
        .max_log_bytes(Some(quota))
        .check()
        .is_ok());
    let over = options
        .clone()
        .segment_bytes(s + 1)
        .max_log_bytes(Some(quota));
    assert!(over.check().is_err());
    assert_eq!(Options::new().max_log_bytes(None).check().ok(), Some(()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the segments, entries and quota (as long as the quota is accepted), a log
    /// that is full of applied commands makes room by compaction: after compacting
    /// everything, a largest command fits, every time round.
    #[test]
    fn a_full_log_always_makes_room_by_compaction(
        segment_bytes in 1u64..20_000,
        max_entry in 1usize..5_000,
        extra in 0u64..30_000,
        sizes in proptest::collection::vec(0usize..5_000, 1..40),
    ) {
        let options = Options::new()
            .preallocate(false)
            .segment_bytes(segment_bytes)
            .max_entry_bytes(max_entry);
        let quota = options.min_log_bytes() + extra;
        let options = options.max_log_bytes(Some(quota));
        let dir = TempDir::new("quota-room");
        let mut log = FileLog::open_with(dir.path(), options).unwrap();
        let mut next = 1;
        let mut sizes = sizes.iter().cycle();
        for _round in 0..3 {
            // Fill with commands until one does not fit.
            loop {
                let len = sizes.next().copied().unwrap_or(0).min(max_entry);
                let d = vec![9u8; len];
                let e = Entry { index: next, term: 1, kind: EntryKind::Command, data: &d };
                match log.append(&e) {
                    Ok(()) => next += 1,
                    Err(e) => {
                        prop_assert_eq!(e, StorageError::Full);
                        break;
                    }
                }
            }
            log.sync().unwrap();
            prop_assert!(log.disk_bytes() <= quota);
            // A new leader's no-op still fits (the reserve).
            let noop = Entry { index: next, term: 1, kind: EntryKind::Noop, data: b"" };
            log.append(&noop).unwrap();
            next += 1;
            // Snapshot and compact all: a largest command fits again.
            log.compact(next - 1).unwrap();
            let d = vec![7u8; max_entry];
            let e = Entry { index: next, term: 1, kind: EntryKind::Command, data: &d };
            prop_assert_eq!(log.append(&e), Ok(()));
            next += 1;
            log.sync().unwrap();
        }
    }
}

/// The node's `max_entry_bytes` keeps entries under the store's limit (the configuration
/// gives the store room for the envelope); an entry past it all the same is a bug of the
/// host: the flush fails, naming it, rather than write a record recovery would refuse.
#[test]
fn an_entry_too_large_is_refused() {
    let dir = TempDir::new("too-large");
    let mut log = FileLog::open_with(dir.path(), Options::new().max_entry_bytes(8)).unwrap();
    let big = [Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Command,
        data: &[0; 9],
    }];
    log.persist(&Batch {
        entries: Entries::from_slice(&big),
        ..batch()
    });
    assert!(matches!(
        log.last_error(),
        Some(FileLogError::EntryTooLarge { len: 9, max: 8 })
    ));
    assert!(log.is_failed());
    assert!(log.sync().is_err());
    drop(log);
    assert_eq!(FileLog::open(dir.path()).unwrap().last_index(), 0);
}

/// A batch whose entries do not follow the log is refused whole, with what was wrong: a
/// record written at the wrong place would be read back as damage.
#[test]
fn a_batch_that_does_not_follow_the_log_fails_it_and_writes_nothing() {
    let dir = TempDir::new("out-of-order");
    let mut log = FileLog::open(dir.path()).unwrap();
    append_range(&mut log, 1..=3, 1);
    log.sync().unwrap();
    let gap = [Entry {
        index: 5,
        term: 1,
        kind: EntryKind::Command,
        data: b"x",
    }];
    log.persist(&Batch {
        entries: Entries::from_slice(&gap),
        ..batch()
    });
    let e = log.sync().unwrap_err();
    assert!(
        e.to_string()
            .contains("entry 5 does not follow the log, which ends at 3"),
        "{e}"
    );
    assert!(log.is_failed());
    drop(log);
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(contents(&log), expected(1..=3, 1));
}

/// A `FileLog` in a directory of its own, as the durable-store conformance suite drives
/// it: a sync is a flush, a crash drops the log without one (what was not flushed is
/// lost), a reopen opens the directory again and fills a memory log from it.
struct SuiteStore {
    dir: TempDir,
    options: Options,
    log: Option<FileLog>,
}

impl SuiteStore {
    fn new(options: Options) -> SuiteStore {
        let dir = TempDir::new("conformance");
        let log = FileLog::open_with(dir.path(), options.clone()).unwrap();
        SuiteStore {
            dir,
            options,
            log: Some(log),
        }
    }

    fn log(&mut self) -> Result<&mut FileLog, String> {
        self.log
            .as_mut()
            .ok_or_else(|| "no log is open".to_string())
    }
}

impl DurableStore for SuiteStore {
    type Error = String;

    fn perform(&mut self, batch: &Batch<'_>) -> Result<(), String> {
        let log = self.log()?;
        log.persist(batch);
        match log.last_error() {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        }
    }

    fn save_taken(&mut self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), String> {
        let log = self.log()?;
        let mut w = log.snapshot_writer(meta).map_err(|e| e.to_string())?;
        w.write_all(bytes).map_err(|e| e.to_string())?;
        FileLog::finish_snapshot(w).map_err(|e| e.to_string())
    }

    fn sync(&mut self) -> Result<(), String> {
        let log = self.log()?;
        log.flush().map_err(|e| e.to_string())?;
        log.wait_for_spare();
        Ok(())
    }

    fn crash(&mut self, _: Crash) {
        self.log = None;
    }

    fn reopen(&mut self) -> Result<Recovered, String> {
        self.log = None;
        let log =
            FileLog::open_with(self.dir.path(), self.options.clone()).map_err(|e| e.to_string())?;
        // A small budget: older entries are read back from the segments.
        let memory = log.recover(256).map_err(|e| e.to_string())?;
        let mut recovered = Recovered::from_log(&memory, |i| log.entry(i));
        recovered.snapshot_bytes = log.snapshot_bytes();
        self.log = Some(log);
        Ok(recovered)
    }
}

/// The durable-store conformance suite of the core (the rules and what a seed does are in
/// `coracle::conformance::durable`): random batches (appends, conflicts, the host's
/// snapshots with compaction, snapshots from a leader installed inside or past the log,
/// hard states, many in one batch) with flushes, crashes and reopens, the recovered state
/// compared with `MemStore` after every reopen. Small segments, so segments roll, are
/// deleted by compaction and cut by truncations. A crash loses what was not flushed.
#[test]
fn the_durable_store_conformance_suite_passes() {
    let suite = durable::Options {
        seeds: 0..12,
        ..durable::Options::default()
    };
    let report = durable::check(&suite, || {
        SuiteStore::new(Options::new().segment_bytes(300).preallocate(false))
    });
    assert!(report.crashes_that_lost_writes >= 10, "{report:?}");
}

/// The same with entries kept behind the snapshot on open (the log starts before the
/// compaction point asked for, which the contract allows) and preallocated segments.
#[test]
fn the_durable_store_conformance_suite_passes_keeping_entries_behind_the_snapshot() {
    let suite = durable::Options {
        seeds: 100..106,
        ..durable::Options::default()
    };
    durable::check(&suite, || {
        SuiteStore::new(Options::new().segment_bytes(700).keep_behind_snapshot(3))
    });
}

/// Throughput of appends and group commits: 256-byte entries, one sync per 64 entries.
/// Not a benchmark with statistics (the machines are shared); run it by hand:
/// `cargo test -p coracle-quic --release -- --ignored --nocapture throughput`.
/// `CORACLE_BENCH_DIR` picks the directory (a disk, not tmpfs, to measure fsync).
#[test]
#[ignore]
fn throughput_of_appends_with_group_commit() {
    let base = std::env::var_os("CORACLE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = TempDir(base.join(format!("coracle-quic-throughput-{}", std::process::id())));
    let mut log = FileLog::open(dir.path()).unwrap();
    let payload = [0x5au8; 256];
    let batches = 2000u64;
    let start = std::time::Instant::now();
    let mut index = 0;
    for _ in 0..batches {
        // One batch of 64 entries a flush, as a node's leader persists them.
        let entries: Vec<Entry<'_>> = (index + 1..=index + 64)
            .map(|i| Entry {
                index: i,
                term: 1,
                kind: EntryKind::Command,
                data: &payload,
            })
            .collect();
        index += 64;
        log.persist(&Batch {
            entries: Entries::from_slice(&entries),
            ..batch()
        });
        log.flush().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{index} entries of 256 bytes, 64 per sync, in {secs:.2} s: {:.0} entries/s, {:.0} syncs/s, {:.1} MiB/s, in {}",
        index as f64 / secs,
        batches as f64 / secs,
        log.stats().bytes_written as f64 / secs / (1 << 20) as f64,
        dir.path().display()
    );
}

// ----- snapshots received from a leader --------------------------------------------------

/// Sends `data` as the snapshot `m` in chunks of `chunk` bytes.
fn receive(log: &mut FileLog, m: &SnapshotMeta, data: &[u8], chunk: usize) {
    if data.is_empty() {
        log.receive_snapshot_chunk(m, 0, &[]);
    }
    for (i, c) in data.chunks(chunk).enumerate() {
        log.receive_snapshot_chunk(m, (i * chunk) as u64, c);
    }
}

fn state_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

const CONFIG: &[u8] = b"\x03 some configuration";

#[test]
fn a_snapshot_received_in_chunks_is_installed_with_its_configuration() {
    let dir = TempDir::new("receive");
    let data = state_bytes(1000, 1);
    let m = SnapshotMeta::new(40, 3, CONFIG).unwrap();
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        append_range(&mut log, 1..=20, 1);
        log.sync().unwrap();
        assert_eq!(log.snapshot().map(|s| s.meta), None);
        assert!(log.snapshot_chunk(0, 10).is_err());
        receive(&mut log, &m, &data, 300);
        assert_eq!(log.snapshot().map(|s| s.meta), None, "not installed yet");
        log.install_snapshot(&m).unwrap();
        assert_eq!(log.snapshot().map(|s| s.meta), Some(m));
        assert_eq!(log.snapshot().map(|s| s.meta).unwrap().config(), CONFIG);
        assert_eq!((log.first_index(), log.last_index()), (41, 40));
        assert_eq!(log.term(40), Some(3));
        assert_eq!(log.snapshot_chunk(0, 10).unwrap(), &data[..10]);
        assert_eq!(log.snapshot_chunk(995, 10).unwrap(), &data[995..]);
        assert_eq!(log.snapshot_chunk(5000, 10).unwrap(), b"");
        assert_eq!(segment_files(dir.path()).len(), 1);
        assert!(!dir.path().join(snapshot::INCOMING).exists());
        append_range(&mut log, 41..=45, 3);
        log.sync().unwrap();
    }
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!(log.snapshot().map(|s| s.meta), Some(m));
    assert_eq!(log.snapshot_bytes().unwrap(), data);
    assert_eq!(log.snapshot_bytes().unwrap(), data);
    assert_eq!(contents(&log), expected(41..=45, 3));
}

/// A host that compacts `keep` entries behind each snapshot finds them again after a
/// restart, of those the segments still hold (one segment here: all of them), and the
/// log starts right after the snapshot by default.
#[test]
fn a_reopened_log_keeps_the_entries_asked_for_behind_its_snapshot() {
    let dir = TempDir::new("keep-behind");
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        append_range(&mut log, 1..=20, 1);
        append_range(&mut log, 21..=30, 2);
        log.sync().unwrap();
        save(&mut log, 25, 2, b"state at 25").unwrap();
        log.compact(25 - 8).unwrap();
    }
    let reopen = |keep| {
        let log = FileLog::open_with(dir.path(), Options::new().keep_behind_snapshot(keep));
        let log = log.unwrap();
        assert_eq!(log.snapshot_point(), Some((25, 2)));
        (
            log.first_index(),
            log.term(log.first_index() - 1),
            contents(&log),
        )
    };
    let mut kept = expected(18..=20, 1);
    kept.extend(expected(21..=30, 2));
    assert_eq!(reopen(8), (18, Some(1), kept));
    let mut kept = expected(15..=20, 1);
    kept.extend(expected(21..=30, 2));
    assert_eq!(reopen(11), (15, Some(1), kept), "more than compaction kept");
    assert_eq!(reopen(0), (26, Some(2), expected(26..=30, 2)));
    // Opening drops entries for good only with their segment: still there for a larger keep.
    let mut all = expected(1..=20, 1);
    all.extend(expected(21..=30, 2));
    assert_eq!(reopen(100), (1, Some(0), all));
}

#[test]
fn an_installed_snapshot_the_log_holds_keeps_the_entries_after_it() {
    let dir = TempDir::new("receive-keep");
    let data = state_bytes(64, 2);
    let m = SnapshotMeta::new(60, 1, &[]).unwrap();
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        append_range(&mut log, 1..=100, 1);
        log.sync().unwrap();
        let before = segment_files(dir.path()).len();
        receive(&mut log, &m, &data, 64);
        log.install_snapshot(&m).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (61, 100));
        assert!(
            segment_files(dir.path()).len() < before,
            "whole segments dropped"
        );
        assert_eq!(contents(&log), expected(61..=100, 1));
    }
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!(contents(&log), expected(61..=100, 1));
    assert_eq!(log.snapshot_point(), Some((60, 1)));
}

#[test]
fn a_snapshot_transfer_resumes_at_an_offset_and_a_gap_is_refused() {
    let dir = TempDir::new("receive-resume");
    let data = state_bytes(100, 3);
    let m = SnapshotMeta::new(10, 2, &[]).unwrap();
    let mut log = FileLog::open(dir.path()).unwrap();
    log.receive_snapshot_chunk(&m, 0, &data[..40]);
    log.receive_snapshot_chunk(&m, 40, &[0xee; 30]);
    log.sync().unwrap();
    // Resent from an earlier offset (a new leader): overwrites, and what followed goes.
    log.receive_snapshot_chunk(&m, 20, &data[20..70]);
    log.receive_snapshot_chunk(&m, 70, &data[70..]);
    log.install_snapshot(&m).unwrap();
    assert_eq!(log.snapshot_bytes().unwrap(), data);
    assert_eq!(log.snapshot().map(|s| s.size), Some(100));
    assert!(!dir.path().join(snapshot::INCOMING).exists());
    // An install of nothing received, or a chunk past what was received, is a bug of the
    // host or the core: the flush fails and the log is poisoned.
    let mut log2 = {
        drop(log);
        FileLog::open(dir.path()).unwrap()
    };
    log2.receive_snapshot_chunk(&SnapshotMeta::new(20, 2, &[]).unwrap(), 5, b"gap");
    assert!(log2.sync().is_err());
    assert!(log2.is_failed());
    drop(log2);
    let mut log3 = FileLog::open(dir.path()).unwrap();
    assert!(log3
        .install_snapshot(&SnapshotMeta::new(30, 2, &[]).unwrap())
        .is_err());
    drop(log3);
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(
        log.snapshot_point(),
        Some((10, 2)),
        "the kept snapshot stays"
    );
}

/// (snapshot point, snapshot bytes, entries) of the log in `dir` after a reopen.
type Seen = (Option<(Index, Term)>, Vec<u8>, Vec<(Index, Term, Vec<u8>)>);

fn seen(dir: &Path) -> Seen {
    let log = FileLog::open_with(dir, small_segments()).unwrap();
    (
        log.snapshot_point(),
        log.snapshot_bytes().unwrap_or_default(),
        contents(&log),
    )
}

#[test]
fn a_crash_at_any_step_of_an_install_leaves_the_old_or_the_new_state() {
    // (snapshot index, term): past the log (discard) and inside it (compaction).
    for (index, term) in [(30, 2), (15, 1)] {
        let steps = [
            Some("receiving"),
            Some("sealed"),
            Some("renamed"),
            Some("dir-synced"),
            Some("discarding"),
            None,
        ];
        for step in steps {
            let dir = TempDir::new("install-crash");
            let old_data = state_bytes(30, 4);
            let new_data = state_bytes(500, 5);
            let m = SnapshotMeta::new(index, term, CONFIG).unwrap();
            {
                let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
                append_range(&mut log, 1..=20, 1);
                log.sync().unwrap();
                save(&mut log, 5, 1, &old_data).unwrap();
                log.compact(5).unwrap();
            }
            let old = seen(dir.path());
            {
                let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
                if step == Some("receiving") {
                    receive(&mut log, &m, &new_data[..200], 100);
                    drop(log); // the crash
                } else {
                    receive(&mut log, &m, &new_data, 128);
                    log.crash_at(step);
                    let r = log.install_snapshot(&m);
                    // "discarding" only happens when the log does not hold the index.
                    assert_eq!(
                        r.is_ok(),
                        step.is_none() || (step == Some("discarding") && index == 15),
                        "{step:?} {index}"
                    );
                }
            }
            let after = seen(dir.path());
            let new_entries = if index == 15 {
                expected(16..=20, 1)
            } else {
                vec![]
            };
            let new: Seen = (Some((index, term)), new_data.clone(), new_entries);
            let expect = match step {
                Some("receiving" | "sealed") => &old,
                _ => &new,
            };
            assert_eq!(&after, expect, "crash at {step:?}, snapshot at {index}");
            assert!(!dir.path().join(snapshot::INCOMING).exists());
            // And the reopened log takes writes after the snapshot.
            let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
            let next = log.last_index() + 1;
            append(&mut log, next, 9);
            log.sync().unwrap();
        }
    }
}

#[test]
fn snapshot_files_of_version_1_are_refused_with_a_clear_error() {
    let dir = TempDir::new("snapshot-v1");
    drop(FileLog::open(dir.path()).unwrap());
    snapshot::write_v1(dir.path(), 10, 1, b"old format");
    let e = FileLog::open(dir.path()).unwrap_err();
    assert!(
        matches!(e, FileLogError::SnapshotVersion { version: 1, .. }),
        "{e}"
    );
    let message = e.to_string();
    assert!(message.contains("version 1"), "{message}");
    assert!(message.contains("cannot be migrated"), "{message}");
}

/// A directory with a kept snapshot at index 7 with [`CONFIG`]: its data, and the file's
/// bytes.
fn saved_snapshot(dir: &TempDir) -> (Vec<u8>, Vec<u8>) {
    let data = state_bytes(40, 6);
    let mut log = FileLog::open(dir.path()).unwrap();
    let m = SnapshotMeta::new(7, 2, CONFIG).unwrap();
    log.save_snapshot(&m, data.clone()).unwrap();
    (data, fs::read(dir.path().join(snapshot::FILE)).unwrap())
}

#[test]
fn a_damaged_or_truncated_snapshot_file_is_refused_at_every_offset() {
    let dir = TempDir::new("snapshot-damage");
    let (data, good) = saved_snapshot(&dir);
    let path = dir.path().join(snapshot::FILE);
    assert_eq!(good.len(), 40 + CONFIG.len() + data.len() + 4);
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        let e = snapshot::read(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                FileLogError::Corrupt { .. } | FileLogError::SnapshotVersion { .. }
            ),
            "flip at {i}: {e}"
        );
        fs::write(&path, &good[..i]).unwrap();
        assert!(snapshot::read(dir.path()).is_err(), "cut at {i}");
    }
    fs::write(&path, &good).unwrap();
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(log.snapshot_bytes().unwrap(), data);
    assert_eq!(log.snapshot().map(|s| s.meta).unwrap().config(), CONFIG);
}

/// A kept snapshot read whole through `Read` (a restore, a backup) checks the file's
/// checksum on the way: a byte flipped in its header, configuration or data after it was
/// opened or while it is read fails the read that reaches the end.
#[test]
fn a_snapshot_read_whole_checks_its_checksum() {
    let dir = TempDir::new("snapshot-read-crc");
    let (data, good) = saved_snapshot(&dir);
    let path = dir.path().join(snapshot::FILE);
    let mut whole = Vec::new();
    let mut file = SnapshotFile::open_kept(dir.path()).unwrap().unwrap();
    assert_eq!(file.remaining(), data.len() as u64);
    file.read_to_end(&mut whole).unwrap();
    assert_eq!(whole, data);
    assert_eq!(file.remaining(), 0);
    // Damaged before it is opened: refused at the open (magic, version, lengths) or by
    // the reads.
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        let Ok(Some(mut file)) = SnapshotFile::open_kept(dir.path()) else {
            continue;
        };
        let e = file.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "flip at {i}: {e}");
    }
    // Damaged after it was opened (a disk going bad under a long read): found by the reads.
    let data_at = good.len() - 4 - data.len();
    for i in data_at..good.len() {
        fs::write(&path, &good).unwrap();
        let mut file = SnapshotFile::open_kept(dir.path()).unwrap().unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&[good[i] ^ 0x10], i as u64)
            .unwrap();
        let e = file.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "flip at {i}: {e}");
    }
}

#[derive(Clone, Debug)]
enum SnapOp {
    Append {
        len: usize,
        new_term: bool,
    },
    Sync,
    /// The host snapshots at a point chosen by this fraction of the kept range, and
    /// compacts through it.
    Save(f64),
    /// A snapshot from a leader: past the log's end, or inside it (same term: the log is
    /// compacted; other term: discarded); stopped at a crash step (index into
    /// `INSTALL_STEPS`, past its end: no crash).
    Install {
        inside: Option<(f64, bool)>,
        step: usize,
        len: usize,
    },
    Crash,
}

const INSTALL_STEPS: [&str; 4] = ["sealed", "renamed", "dir-synced", "discarding"];

fn snap_op() -> impl Strategy<Value = SnapOp> {
    prop_oneof![
        8 => (0usize..40, proptest::bool::weighted(0.1))
            .prop_map(|(len, new_term)| SnapOp::Append { len, new_term }),
        3 => Just(SnapOp::Sync),
        1 => (0.0f64..1.0).prop_map(SnapOp::Save),
        2 => (
            proptest::option::of((0.0f64..1.0, proptest::bool::ANY)),
            0usize..8,
            0usize..300
        )
            .prop_map(|(inside, step, len)| SnapOp::Install { inside, step, len }),
        1 => Just(SnapOp::Crash),
    ]
}

/// The model of a log with snapshots: the snapshot, the entries kept after `first - 1`, and
/// the index through which entries are on disk.
struct SnapModel {
    snap: Option<(Index, Term, Vec<u8>)>,
    entries: Vec<OwnedEntry>,
    first: Index,
    prev_term: Term,
    durable: Index,
}

impl SnapModel {
    fn last(&self) -> Index {
        self.first + self.entries.len() as Index - 1
    }

    fn term(&self, i: Index) -> Option<Term> {
        if i + 1 == self.first {
            return Some(self.prev_term);
        }
        let p = usize::try_from(i.checked_sub(self.first)?).ok()?;
        self.entries.get(p).map(|e| e.term)
    }

    /// The snapshot at `index`/`term` is in place; the log restarts after it.
    fn restart_after(&mut self, index: Index, term: Term, data: Vec<u8>) {
        if self.term(index) == Some(term) {
            let n = (index + 1 - self.first) as usize;
            self.entries.drain(..n.min(self.entries.len()));
        } else {
            self.entries.clear();
            self.durable = index;
        }
        self.first = index + 1;
        self.prev_term = term;
        self.snap = Some((index, term, data));
    }

    /// Checks `log` against the model (in memory, or reopened after a crash).
    fn check(&self, log: &FileLog) -> Result<(), TestCaseError> {
        prop_assert_eq!(log.snapshot_point(), self.snap.as_ref().map(|s| (s.0, s.1)));
        prop_assert_eq!(
            log.snapshot_bytes(),
            self.snap.as_ref().map(|s| s.2.clone())
        );
        prop_assert_eq!(log.first_index(), self.first);
        prop_assert_eq!(log.term(self.first - 1), Some(self.prev_term));
        prop_assert_eq!(log.last_index(), self.last());
        for e in &self.entries {
            prop_assert_eq!(log.entry(e.index), Some(e.clone()));
        }
        Ok(())
    }

    /// After a crash: the log is a prefix of the model after the snapshot, at least as long
    /// as what was on disk (less what a discard took).
    fn crashed(&mut self, log: &FileLog) -> Result<(), TestCaseError> {
        let got = log.last_index();
        let base = self.snap.as_ref().map_or(0, |s| s.0);
        // Entries the snapshot covers are forgotten again on open.
        if self.first <= base {
            let n = (base + 1 - self.first) as usize;
            self.entries.drain(..n.min(self.entries.len()));
            self.first = base + 1;
            self.prev_term = self.snap.as_ref().map_or(0, |s| s.1);
        }
        let durable = self.durable.max(base);
        prop_assert!(
            got >= base && got <= self.last(),
            "log ends at {got}, snapshot {base}, model {}",
            self.last()
        );
        if got < durable {
            // Only a discard (the snapshot's entry never reached the disk) loses more.
            prop_assert_eq!(got, base, "durable entries lost");
            prop_assert!(self.durable < base || log.recovery().discarded_by_snapshot);
        }
        self.entries.truncate((got + 1 - self.first) as usize);
        self.durable = got;
        self.check(log)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random appends, host snapshots, snapshots installed from a leader (with a crash at
    /// any step), syncs and crashes against a model: the snapshot and the log after it are
    /// always those of one state (the old or the new one), never a mix.
    #[test]
    fn random_snapshots_and_crashes_match_the_model(ops in proptest::collection::vec(snap_op(), 1..60)) {
        let dir = TempDir::new("prop-snap");
        let options = Options::new().segment_bytes(200);
        let mut log = FileLog::open_with(dir.path(), options.clone()).unwrap();
        let mut m = SnapModel { snap: None, entries: Vec::new(), first: 1, prev_term: 0, durable: 0 };
        let mut term: Term = 1;
        for op in ops {
            match op {
                SnapOp::Append { len, new_term } => {
                    term += u64::from(new_term);
                    let index = m.last() + 1;
                    let e = OwnedEntry { index, term, kind: EntryKind::Command, data: data(index + term, len) };
                    log.append(&e.as_entry()).unwrap();
                    m.entries.push(e);
                    // Queued: what the files show changes with the next flush.
                    continue;
                }
                SnapOp::Sync => {
                    log.sync().unwrap();
                    m.durable = m.last();
                }
                SnapOp::Save(f) => {
                    let lo = (m.first - 1).max(m.snap.as_ref().map_or(0, |s| s.0)).max(1);
                    if lo > m.last() {
                        continue;
                    }
                    let index = lo + ((m.last() - lo) as f64 * f) as Index;
                    let t = m.term(index).unwrap();
                    let bytes = data(index * 3, (index % 50) as usize);
                    save(&mut log, index, t, &bytes).unwrap();
                    log.compact(index).unwrap();
                    m.restart_after(index, t, bytes);
                }
                SnapOp::Install { inside, step, len } => {
                    let lo = m.first.max(m.snap.as_ref().map_or(0, |s| s.0) + 1);
                    let (index, t) = match inside {
                        Some((f, same)) if lo <= m.last() => {
                            let index = lo + ((m.last() - lo) as f64 * f) as Index;
                            let t = m.term(index).unwrap();
                            (index, if same { t } else { term + 1 })
                        }
                        _ => (m.last() + 1 + len as Index % 3, term + 1),
                    };
                    term = term.max(t);
                    let bytes = data(index * 5, len);
                    let meta = SnapshotMeta::new(index, t, CONFIG).unwrap();
                    receive(&mut log, &meta, &bytes, 64);
                    let crash = INSTALL_STEPS.get(step).copied();
                    log.crash_at(crash);
                    match log.install_snapshot(&meta) {
                        Ok(()) => m.restart_after(index, t, bytes),
                        Err(_) => {
                            let s = crash.unwrap();
                            drop(log);
                            log = FileLog::open_with(dir.path(), options.clone()).unwrap();
                            if s != "sealed" {
                                // The rename happened: the new snapshot is in place.
                                m.snap = Some((index, t, bytes.clone()));
                                if m.term(index) != Some(t) {
                                    m.durable = m.durable.min(index);
                                }
                            }
                            m.crashed(&log)?;
                            term = term.max(log.term(log.last_index()).unwrap_or(0));
                            continue;
                        }
                    }
                }
                SnapOp::Crash => {
                    drop(log);
                    log = FileLog::open_with(dir.path(), options.clone()).unwrap();
                    m.crashed(&log)?;
                    continue;
                }
            }
            m.check(&log)?;
        }
    }
}

// ----- issue 15, items 4 and 7: incomplete durable state, and what recovery dropped -------

/// The damage `open` refused `dir` with.
fn damage(dir: &Path, options: Options) -> Damage {
    match FileLog::open_with(dir, options) {
        Err(FileLogError::Damaged { damage, .. }) => damage,
        other => panic!("expected damage, got {other:?}"),
    }
}

/// Entries 1..=12 in four syncs of three: the segment's mark says 9 (what the syncs before
/// the last made durable).
fn four_syncs(dir: &Path) -> PathBuf {
    let mut log = FileLog::open(dir).unwrap();
    for s in 0..4 {
        append_range(&mut log, s * 3 + 1..=s * 3 + 3, 1);
        log.sync().unwrap();
    }
    log.disk_ref().segments.last().unwrap().path.clone()
}

/// A segment cut at every offset: inside the last write, a torn tail whose report names the
/// entries dropped and says they were never durable; before it, entries that were durable
/// are gone, and open refuses the directory, naming them, without touching any file.
#[test]
fn a_segment_cut_short_is_a_torn_tail_or_lost_entries_named_at_every_offset() {
    let dir = TempDir::new("cut-short");
    let seg = four_syncs(dir.path());
    let original = fs::read(&seg).unwrap();
    let starts = record_starts(&original);
    assert_eq!(starts.len(), 12);
    for cut in segment::HEADER..original.len() {
        fs::write(&seg, &original[..cut]).unwrap();
        // Records wholly before the cut.
        let kept = starts[1..]
            .iter()
            .chain([&original.len()])
            .filter(|&&end| end <= cut)
            .count() as Index;
        if kept >= 9 {
            let log = FileLog::open(dir.path()).unwrap();
            assert_eq!(log.last_index(), kept, "cut at {cut}");
            if let Some(t) = &log.recovery().tail_cut {
                assert_eq!((t.from, t.durable), (kept + 1, Some(9)), "cut at {cut}");
                let text = t.to_string();
                assert!(
                    text.contains(&format!("entry {}", kept + 1))
                        && text.contains("never acknowledged"),
                    "{text}"
                );
            }
        } else {
            let before = fs::read(&seg).unwrap();
            let e = FileLog::open(dir.path()).unwrap_err();
            let FileLogError::Damaged {
                damage: Damage::LostEntries { from, to, ref file },
                ..
            } = e
            else {
                panic!("cut at {cut}: {e}");
            };
            assert_eq!((from, to, file), (kept + 1, 9, &seg), "cut at {cut}");
            let text = e.to_string();
            assert!(
                text.contains(&format!("entries {}..=9 ({} entries", kept + 1, 9 - kept))
                    && text.contains("acknowledged")
                    && text.contains("add-learner"),
                "{text}"
            );
            assert_eq!(fs::read(&seg).unwrap(), before, "nothing is cut");
        }
        fs::write(&seg, &original).unwrap();
    }
    // A clean reopen makes the whole log durable: the next sync's mark says 12.
    let mut log = FileLog::open(dir.path()).unwrap();
    append(&mut log, 13, 1);
    log.sync().unwrap();
    drop(log);
    let now = fs::read(&seg).unwrap();
    fs::write(&seg, &now[..starts[11]]).unwrap();
    assert_eq!(
        damage(dir.path(), Options::new()),
        Damage::LostEntries {
            file: seg.clone(),
            from: 12,
            to: 12
        }
    );
}

/// The last segments deleted: the one left is sealed, and open says which entries went.
/// A middle segment deleted: the gap is named. Truncation unseals before it deletes.
#[test]
fn deleted_segments_are_named_with_the_entries_they_held() {
    let dir = TempDir::new("deleted-segments");
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        append_range(&mut log, 1..=60, 1);
        log.sync().unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 4);
    let base = |p: &Path| segment::parse_name(p.file_name().unwrap().to_str().unwrap()).unwrap();
    let last = files.last().unwrap().clone();
    let saved = fs::read(&last).unwrap();
    fs::remove_file(&last).unwrap();
    assert_eq!(
        damage(dir.path(), small_segments()),
        Damage::MissingSegments {
            file: files[files.len() - 2].clone(),
            from: base(&last)
        }
    );
    fs::write(&last, saved).unwrap();
    let middle = files[1].clone();
    fs::remove_file(&middle).unwrap();
    let e = FileLog::open_with(dir.path(), small_segments()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "entries {}..={} ({} entries) are missing",
            base(&middle),
            base(&files[2]) - 1,
            base(&files[2]) - base(&middle)
        )),
        "{text}"
    );
    // Truncating across segments leaves an unsealed last one: nothing is taken for lost.
    let dir = TempDir::new("truncate-unseals");
    let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    append_range(&mut log, 1..=60, 1);
    log.sync().unwrap();
    log.truncate_suffix(10).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!(log.last_index(), 9);
}

#[test]
fn a_directory_missing_its_hard_state_or_its_log_is_refused() {
    let dir = TempDir::new("missing-files");
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        assert!(log.recovery().initialised);
        log.set_hard_state(HardState {
            current_term: 6,
            voted_for: Some(2),
        })
        .unwrap();
        append_range(&mut log, 1..=30, 6);
        log.sync().unwrap();
    }
    let hs = dir.path().join(hard_state::FILE);
    let saved = fs::read(&hs).unwrap();
    fs::remove_file(&hs).unwrap();
    assert_eq!(
        damage(dir.path(), small_segments()),
        Damage::MissingHardState { newest_term: 6 }
    );
    let e = FileLog::open_with(dir.path(), small_segments()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("hard state") && text.contains("term 6") && text.contains("vote twice"),
        "{text}"
    );
    assert!(text.contains("coracle admin remove"), "{text}");
    fs::write(&hs, &saved).unwrap();
    // Every segment gone.
    let files = segment_files(dir.path());
    let moved: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|f| (f.clone(), fs::read(f).unwrap()))
        .collect();
    for f in &files {
        fs::remove_file(f).unwrap();
    }
    assert_eq!(
        damage(dir.path(), small_segments()),
        Damage::NoSegments { snapshot: None }
    );
    for (f, b) in &moved {
        fs::write(f, b).unwrap();
    }
    // Even an empty log of a new directory: the identity says there was a segment.
    let fresh = TempDir::new("missing-files-fresh");
    drop(FileLog::open(fresh.path()).unwrap());
    for f in segment_files(fresh.path()) {
        fs::remove_file(f).unwrap();
    }
    assert_eq!(
        damage(fresh.path(), Options::new()),
        Damage::NoSegments { snapshot: None }
    );
    fs::remove_file(fresh.path().join(hard_state::FILE)).unwrap();
    assert_eq!(
        damage(fresh.path(), Options::new()),
        Damage::MissingHardState { newest_term: 0 }
    );
    // Put back, the directory opens as it was.
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!(log.hard_state().current_term, 6);
    assert_eq!(log.last_index(), 30);
    assert!(!log.recovery().initialised && !log.recovery().adopted);
}

/// Initialising a directory writes the hard state, then the first segment, then the
/// identity, each durably: a crash between the first two leaves only a new node's hard
/// state (term 0, no vote). That is still a new directory, not one that lost its log
/// (the identity module's promise: a crash during initialisation never looks damaged).
#[test]
fn a_crash_while_a_directory_is_initialised_leaves_a_new_directory() {
    let dir = TempDir::new("init-crash");
    drop(FileLog::open(dir.path()).unwrap());
    for f in segment_files(dir.path()) {
        fs::remove_file(f).unwrap();
    }
    fs::remove_file(dir.path().join(identity::FILE)).unwrap();
    let log = FileLog::open(dir.path()).unwrap();
    assert!(log.recovery().initialised);
    assert_eq!(
        (log.last_index(), log.hard_state()),
        (0, HardState::default())
    );
    drop(log);
    // A hard state with a term or a vote is a node's past: without segments, damage.
    let dir = TempDir::new("init-crash-voted");
    drop(FileLog::open(dir.path()).unwrap());
    for f in segment_files(dir.path()) {
        fs::remove_file(f).unwrap();
    }
    fs::remove_file(dir.path().join(identity::FILE)).unwrap();
    hard_state::write(
        dir.path(),
        HardState {
            current_term: 2,
            voted_for: Some(1),
        },
    )
    .unwrap();
    assert_eq!(
        damage(dir.path(), Options::new()),
        Damage::NoSegments { snapshot: None }
    );
}

#[test]
fn a_directory_of_another_node_is_refused_and_one_from_before_identities_is_adopted() {
    let dir = TempDir::new("identity");
    let id = {
        let log = FileLog::open_with(dir.path(), Options::new().member(7, 2)).unwrap();
        log.identity()
    };
    assert_eq!((id.cluster, id.node), (7, 2));
    // Reopened: the same identity; another node's or cluster's configuration is refused.
    let log = FileLog::open_with(dir.path(), Options::new().member(7, 2)).unwrap();
    assert_eq!(log.identity(), id);
    drop(log);
    for (cluster, node) in [(7, 3), (8, 2)] {
        let d = damage(dir.path(), Options::new().member(cluster, node));
        assert_eq!(
            d,
            Damage::WrongIdentity {
                found: id,
                cluster,
                node
            }
        );
        let e = FileLogError::Damaged {
            dir: dir.path().to_path_buf(),
            damage: d,
        };
        assert!(e.to_string().contains("data_dir"), "{e}");
    }
    // No member given: not checked (a tool inspecting a node's directory).
    assert_eq!(FileLog::open(dir.path()).unwrap().identity(), id);
    // A directory written before identities: adopted when consistent...
    {
        let mut log = FileLog::open_with(dir.path(), Options::new().member(7, 2)).unwrap();
        log.set_hard_state(HardState {
            current_term: 3,
            voted_for: None,
        })
        .unwrap();
        append_range(&mut log, 1..=5, 3);
        log.sync().unwrap();
    }
    fs::remove_file(dir.path().join(identity::FILE)).unwrap();
    let log = FileLog::open_with(dir.path(), Options::new().member(7, 2)).unwrap();
    assert!(log.recovery().adopted);
    assert_ne!(log.identity().incarnation, id.incarnation);
    assert_eq!(log.last_index(), 5);
    drop(log);
    // ...refused when not: entries of term 3 and no hard state.
    fs::remove_file(dir.path().join(identity::FILE)).unwrap();
    fs::remove_file(dir.path().join(hard_state::FILE)).unwrap();
    assert_eq!(
        damage(dir.path(), Options::new()),
        Damage::MissingHardState { newest_term: 3 }
    );
    // A damaged identity file is an error, never a new identity.
    let dir = TempDir::new("identity-damaged");
    drop(FileLog::open(dir.path()).unwrap());
    let path = dir.path().join(identity::FILE);
    let mut bytes = fs::read(&path).unwrap();
    bytes[30] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        FileLog::open(dir.path()),
        Err(FileLogError::Corrupt { .. })
    ));
}

#[test]
fn a_log_the_state_machine_cannot_be_rebuilt_from_is_named() {
    let dir = TempDir::new("complete");
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        log.set_hard_state(HardState {
            current_term: 2,
            voted_for: None,
        })
        .unwrap();
        append_range(&mut log, 1..=40, 2);
        log.sync().unwrap();
        log.check_complete().unwrap();
        save(&mut log, 20, 2, b"state at 20").unwrap();
        log.compact(20).unwrap();
        log.check_complete().unwrap();
    }
    // The snapshot deleted: entries 1..=first-1 are nowhere.
    let snap = dir.path().join(snapshot::FILE);
    let saved = fs::read(&snap).unwrap();
    fs::remove_file(&snap).unwrap();
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    let first = log.first_index();
    assert!(first > 1);
    let e = log.check_complete().unwrap_err();
    assert!(
        matches!(&e, FileLogError::Damaged { damage: Damage::Gap { from: 1, to }, .. } if *to == first - 1),
        "{e}"
    );
    drop(log);
    fs::write(&snap, saved).unwrap();
    // An older copy of the hard state: term 1, entries of term 2.
    hard_state::write(
        dir.path(),
        HardState {
            current_term: 1,
            voted_for: None,
        },
    )
    .unwrap();
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    let e = log.check_complete().unwrap_err();
    assert!(
        matches!(
            &e,
            FileLogError::Damaged {
                damage: Damage::StaleHardState {
                    term: 1,
                    log_term: 2,
                    index: 40
                },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn leftover_temporary_files_are_described_before_they_are_removed() {
    let dir = TempDir::new("leftovers");
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        append_range(&mut log, 1..=5, 1);
        log.sync().unwrap();
        save(&mut log, 4, 1, b"state").unwrap();
    }
    let hs = HardState {
        current_term: 9,
        voted_for: Some(3),
    };
    let other = TempDir::new("leftovers-hs");
    fs::create_dir_all(other.path()).unwrap();
    hard_state::write(other.path(), hs).unwrap();
    fs::copy(
        other.path().join(hard_state::FILE),
        dir.path().join("hard_state.tmp"),
    )
    .unwrap();
    fs::copy(
        dir.path().join(snapshot::FILE),
        dir.path().join(snapshot::saving(1)),
    )
    .unwrap();
    fs::write(dir.path().join("00000000000000000042.seg.tmp"), b"x").unwrap();
    let log = FileLog::open(dir.path()).unwrap();
    let mut what: Vec<String> = log
        .recovery()
        .leftovers
        .iter()
        .map(|l| l.what.clone())
        .collect();
    what.sort();
    assert_eq!(what.len(), 3, "{what:?}");
    for words in [
        "hard state (term 9, vote Some(3))",
        "snapshot at index 4",
        "entries from 42 on",
    ] {
        assert!(what.iter().any(|w| w.contains(words)), "{words}: {what:?}");
    }
    assert!(what.iter().all(|w| w.contains("no entry")), "{what:?}");
    assert_eq!(log.recovery().warnings().len(), 3);
    assert!(temporary_files(dir.path()).is_empty());
}

/// A crash after the new segment of a discard is in place, before the old ones are gone:
/// they are removed on open and reported with their entries, not taken for damage.
#[test]
fn segments_a_snapshot_superseded_are_removed_and_reported() {
    let dir = TempDir::new("superseded");
    let new_data = state_bytes(100, 3);
    let m = SnapshotMeta::new(50, 4, CONFIG).unwrap();
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        append_range(&mut log, 1..=30, 1);
        log.sync().unwrap();
        receive(&mut log, &m, &new_data, 64);
        // No segment starts after index 51: the discard stops right after the new segment
        // is in place, the old ones (entries 1..=30) still there.
        log.crash_at(Some("discarding"));
        assert!(log.install_snapshot(&m).is_err());
        assert!(segment_files(dir.path()).len() > 1);
    }
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (51, 50));
    assert_eq!(segment_files(dir.path()).len(), 1);
    let r = log.recovery();
    let superseded = r.superseded.as_ref().unwrap();
    assert_eq!(
        (superseded.entries, superseded.snapshot),
        (Some((1, 30)), 50)
    );
    let text = r.warnings().join("\n");
    assert!(text.contains("entries 1..=30 (30 entries)"), "{text}");
}

/// Every file of `dir` but the lock, with its bytes.
fn files_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with(dir::LOCK_FILE))
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

/// A crash inside a new directory's first open, after its first segment is created and
/// before its `format` and `identity` files are written, leaves a directory with no entry,
/// no vote and no identity: the next open takes it for the new directory it is (it used to
/// refuse it as the previous release's format 1).
#[test]
fn a_crash_inside_the_first_open_leaves_a_new_directory() {
    let dir = TempDir::new("first-open-crash");
    drop(FileLog::open_with(dir.path(), small_segments()).unwrap());
    fs::remove_file(dir.path().join(identity::FILE)).unwrap();
    fs::remove_file(dir.path().join(format::FILE)).unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the first segment, empty"
    );
    let mut log = FileLog::open_with(dir.path(), small_segments())
        .unwrap_or_else(|e| panic!("a new directory: {e}"));
    assert!(log.recovery().initialised && !log.recovery().adopted);
    assert_eq!(log.recovery().upgraded_from, None);
    assert_eq!(format::read(dir.path()).unwrap(), format::CURRENT);
    append_range(&mut log, 1..=3, 1);
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!(contents(&log), expected(1..=3, 1));
}

/// The data directory's format (issue 19): a new directory is marked with this build's
/// format; one of the previous release (no marker: its command entries are in the format
/// before the host's) is refused with what to do, and so is a newer build's directory or
/// a marker that is garbage, before anything in it is written.
#[test]
fn other_releases_data_directory_formats_are_refused() {
    let dir = TempDir::new("format");
    {
        let mut log = FileLog::open_with(dir.path(), small_segments()).unwrap();
        assert_eq!(log.recovery().upgraded_from, None, "a new directory");
        log.set_hard_state(HardState {
            current_term: 4,
            voted_for: Some(1),
        })
        .unwrap();
        append_range(&mut log, 1..=20, 4);
        log.sync().unwrap();
    }
    let marker = dir.path().join(format::FILE);
    assert_eq!(format::read(dir.path()).unwrap(), format::CURRENT);

    // The previous release's directory (no marker): refused, nothing written.
    let current = fs::read(&marker).unwrap();
    fs::remove_file(&marker).unwrap();
    let before = files_of(dir.path());
    let e = FileLog::open_with(dir.path(), small_segments()).unwrap_err();
    assert!(
        matches!(e, FileLogError::FormatTooOld { found: 1, .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("data directory format 1 was written by an earlier release")
            && text.contains("new, empty data directory"),
        "{text}"
    );
    assert_eq!(files_of(dir.path()), before, "nothing written");
    fs::write(&marker, &current).unwrap();
    let log = FileLog::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!((log.last_index(), log.hard_state().current_term), (20, 4));
    drop(log);

    // A newer build's directory: refused with what to do, and left exactly as it was
    // (even a temporary file the newer build may still need).
    let newer = |version: u32| {
        let mut b = current.clone();
        b[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&b[..12]);
        b[12..].copy_from_slice(&crc.to_le_bytes());
        b
    };
    for version in [format::CURRENT + 1, u32::MAX] {
        fs::write(&marker, newer(version)).unwrap();
        fs::write(dir.path().join("newer.tmp"), b"of a newer build").unwrap();
        let before = files_of(dir.path());
        let e = FileLog::open_with(dir.path(), small_segments()).unwrap_err();
        assert!(
            matches!(e, FileLogError::FormatTooNew { found, supported: format::CURRENT, .. } if found == version),
            "{e:?}"
        );
        assert!(
            e.to_string().contains(&format!(
                "data directory format {version} is newer than this binary supports ({}); upgrade coracle",
                format::CURRENT
            )),
            "{e}"
        );
        assert_eq!(files_of(dir.path()), before, "nothing changed");
    }
    fs::remove_file(dir.path().join("newer.tmp")).unwrap();

    // Garbage in the marker: refused as corrupt, naming the file, nothing changed.
    let mut flipped = current.clone();
    flipped[9] ^= 0x10;
    let garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"2\n".to_vec(),
        current[..15].to_vec(),
        [current.clone(), vec![0]].concat(),
        flipped,
        newer(0),
        vec![0xff; 16],
        b"CORAIDEN\x01\0\0\0\0\0\0\0".to_vec(),
    ];
    for bytes in garbage {
        fs::write(&marker, &bytes).unwrap();
        let before = files_of(dir.path());
        match FileLog::open_with(dir.path(), small_segments()) {
            Err(e @ FileLogError::Corrupt { .. }) => {
                assert!(e.to_string().contains("format"), "{e}")
            }
            other => panic!("{bytes:?}: {other:?}"),
        }
        assert_eq!(files_of(dir.path()), before, "{bytes:?}: nothing changed");
    }

    // A damaged directory without a marker is refused for its damage first.
    fs::remove_file(&marker).unwrap();
    fs::remove_file(dir.path().join(hard_state::FILE)).unwrap();
    assert_eq!(
        damage(dir.path(), small_segments()),
        Damage::MissingHardState { newest_term: 4 }
    );
    assert!(!marker.exists(), "not marked");
}
