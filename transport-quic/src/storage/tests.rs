//! Tests of the durable log: roundtrips, crashes (a `FileLog` dropped without `sync`), torn
//! and damaged files, the lock, read-only directories, a full log, and a property test
//! against a model.

use super::*;
use coracle::EntryKind;
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

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

fn append(log: &mut FileLog, index: Index, term: Term) {
    let d = data(index, (index % 7) as usize * 5);
    log.append(&Entry {
        index,
        term,
        kind: EntryKind::Command,
        data: &d,
    })
    .unwrap();
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

fn small_segments() -> Options {
    Options::new().segment_bytes(256)
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
        (m.kind, m.term, m.data),
        (EntryKind::Membership, 3, &b"1,2,3"[..])
    );
    assert_eq!(log.recovery().tail_cut, None);
    assert_eq!(log.recovery().entries, 12);
}

/// What a log answers about indexes 0..=6: the first and last index, every term and entry.
type View = (Index, Index, Vec<Option<Term>>, Vec<Option<OwnedEntry>>);

fn view(s: &dyn LogStorage) -> View {
    (
        s.first_index(),
        s.last_index(),
        (0..=6).map(|i| s.term(i)).collect(),
        (0..=6).map(|i| s.entry(i).map(OwnedEntry::from)).collect(),
    )
}

/// The same script on a `FileLog` and on the core's `VecLog` (the reference for the
/// contract of `LogStorage`): every answer and every error is the same, also after a reopen.
#[test]
fn the_storage_contract_holds_as_for_vec_log() {
    let dir = TempDir::new("contract");
    let mut log = FileLog::open(dir.path()).unwrap();
    let mut model = coracle::VecLog::new();
    let e = |index, term| Entry {
        index,
        term,
        kind: EntryKind::Command,
        data: b"abc",
    };
    type Step = Box<dyn Fn(&mut dyn LogStorage) -> Result<(), StorageError>>;
    let script: Vec<Step> = vec![
        Box::new(move |s| s.append(&e(1, 1))),
        Box::new(move |s| s.append(&e(2, 2))),
        Box::new(move |s| s.append(&e(3, 3))),
        Box::new(move |s| s.append(&e(4, 4))),
        Box::new(move |s| s.append(&e(9, 1))),
        Box::new(|s| s.truncate_suffix(3)),
        Box::new(|s| s.compact(1)),
        Box::new(|s| s.truncate_suffix(1)),
        Box::new(|s| s.truncate_suffix(9)),
        Box::new(|s| s.compact(9)),
        Box::new(|s| s.compact(0)),
        Box::new(move |s| s.append(&e(3, 5))),
        Box::new(|s| s.compact(3)),
        Box::new(move |s| s.append(&e(4, 5))),
        Box::new(|s| s.truncate_suffix(4)),
    ];
    for (i, step) in script.iter().enumerate() {
        assert_eq!(step(&mut log), step(&mut model), "step {i}");
        assert_eq!(view(&log), view(&model), "step {i}");
    }
    assert_eq!(view(&log).0, 4);
    log.save_snapshot(3, 5, b"s").unwrap();
    log.sync().unwrap();
    drop(log);
    let log = FileLog::open(dir.path()).unwrap();
    assert_eq!(view(&log), view(&model), "after reopen");
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
fn truncated_entries_never_come_back_after_a_crash() {
    let dir = TempDir::new("truncate");
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        append_range(&mut log, 1..=10, 1);
        log.sync().unwrap();
        log.truncate_suffix(6).unwrap();
        // New entries of a new term after the cut, then a crash before any sync.
        append_range(&mut log, 6..=8, 2);
    }
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        assert_eq!(contents(&log), expected(1..=5, 1), "6..=10 stay cut");
        append_range(&mut log, 6..=8, 2);
        log.sync().unwrap();
        // A second cut, of synced entries of both terms, then a crash.
        log.truncate_suffix(4).unwrap();
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
    for offset in (0..segment::HEADER).chain(starts[3]..original.len()) {
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
        log.save_snapshot(10, 1, b"state at 10").unwrap();
        assert_eq!(log.first_index(), 1, "the host decides when to compact");
        assert_eq!(log.snapshot_point(), Some((10, 1)));
        assert!(matches!(
            log.save_snapshot(9, 1, b"older"),
            Err(FileLogError::StaleSnapshot {
                index: 9,
                saved: 10
            })
        ));
    }
    // A crash while writing a newer snapshot.
    fs::write(dir.path().join("snapshot.tmp"), b"CORASNAP half").unwrap();
    let log = FileLog::open(dir.path()).unwrap();
    let snap = log.load_snapshot().unwrap().unwrap();
    assert_eq!(
        snap,
        Snapshot {
            index: 10,
            term: 1,
            data: b"state at 10".to_vec()
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
fn a_snapshot_the_log_does_not_hold_discards_the_log() {
    let dir = TempDir::new("snapshot-discard");
    {
        let mut log = FileLog::open(dir.path()).unwrap();
        append_range(&mut log, 1..=5, 1);
        log.sync().unwrap();
        // Installed from a leader, past the end of the log.
        log.save_snapshot(50, 3, b"s50").unwrap();
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
        log.save_snapshot(52, 4, b"s52").unwrap();
        assert_eq!((log.first_index(), log.last_index()), (53, 52));
    }
    // A crash between saving a snapshot and discarding the log: open finishes the job.
    snapshot::write(dir.path(), 60, 5, b"s60").unwrap();
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
        log.save_snapshot(50, 1, b"s").unwrap();
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

/// A real full disk cannot be made here without mounting a file system, so the quota option
/// stands in for it: past it an append is `Full` (the node pushes back) and compaction makes
/// room. A real `ENOSPC` surfaces as an I/O error; its text is checked below.
#[test]
fn a_full_log_is_a_clear_error_and_compaction_makes_room() {
    let dir = TempDir::new("full");
    let options = small_segments().max_log_bytes(Some(1024));
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
    assert!(log.disk_bytes() <= 1024);
    let e = log.last_error().unwrap();
    assert!(
        matches!(e, FileLogError::QuotaExceeded { limit: 1024, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("full"), "{e}");
    assert!(
        !log.is_failed(),
        "a full log is back-pressure, not a failure"
    );
    log.compact(next - 2).unwrap();
    log.append(&Entry {
        index: next,
        term: 1,
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
fn an_entry_too_large_is_refused() {
    let dir = TempDir::new("too-large");
    let mut log = FileLog::open_with(dir.path(), Options::new().max_entry_bytes(8)).unwrap();
    let e = log.append(&Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Command,
        data: &[0; 9],
    });
    assert_eq!(e, Err(StorageError::EntryTooLarge));
    assert!(matches!(
        log.last_error(),
        Some(FileLogError::EntryTooLarge { len: 9, max: 8 })
    ));
    assert!(!log.is_failed());
}

/// One step of the property test.
#[derive(Clone, Debug)]
enum Op {
    /// Append an entry with this many bytes, in a newer term if `new_term`.
    Append {
        len: usize,
        new_term: bool,
    },
    /// Truncate from a point chosen by this fraction of the kept range.
    Truncate(f64),
    /// Compact through a point chosen by this fraction of the kept range.
    Compact(f64),
    /// Set the hard state to a new term.
    HardState,
    Sync,
    /// Drop without sync and reopen.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..40, proptest::bool::weighted(0.1))
            .prop_map(|(len, new_term)| Op::Append { len, new_term }),
        1 => (0.0f64..1.0).prop_map(Op::Truncate),
        1 => (0.0f64..1.0).prop_map(Op::Compact),
        1 => Just(Op::HardState),
        3 => Just(Op::Sync),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random appends, truncations, compactions, hard states, syncs and crashes against a
    /// model: after every crash the log is a prefix of the log before it, at least as long
    /// as what was synced (less what was cut since), with no entry that was cut or
    /// overwritten, and the hard state is one that was set since the last sync.
    #[test]
    fn random_operations_and_crashes_match_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = TempDir::new("prop");
        let options = Options::new().segment_bytes(160);
        let mut log = FileLog::open_with(dir.path(), options.clone()).unwrap();
        // Every entry from index 1, as the log holds them now (compacted ones included).
        let mut all: Vec<OwnedEntry> = Vec::new();
        let mut first: Index = 1;
        let mut durable_floor: Index = 0;
        let mut hard_state = HardState::default();
        let mut hard_states_since_sync = vec![hard_state];
        for op in ops {
            let last = all.len() as Index;
            match op {
                Op::Append { len, new_term } => {
                    let term = all.last().map_or(1, |e| e.term) + u64::from(new_term);
                    let e = OwnedEntry {
                        index: last + 1,
                        term,
                        kind: EntryKind::Command,
                        data: data(last + 1 + term, len),
                    };
                    log.append(&e.as_entry()).unwrap();
                    all.push(e);
                }
                Op::Truncate(f) => {
                    let from = first + ((last + 1 - first) as f64 * f) as Index;
                    log.truncate_suffix(from).unwrap();
                    all.truncate(from as usize - 1);
                    durable_floor = durable_floor.min(from - 1);
                }
                Op::Compact(f) => {
                    let through = first - 1 + ((last + 1 - first) as f64 * f) as Index;
                    log.compact(through).unwrap();
                    first = first.max(through + 1);
                }
                Op::HardState => {
                    hard_state.current_term += 1;
                    log.set_hard_state(hard_state).unwrap();
                    hard_states_since_sync.push(hard_state);
                }
                Op::Sync => {
                    log.sync().unwrap();
                    durable_floor = last;
                    hard_states_since_sync = vec![hard_state];
                }
                Op::Crash => {
                    drop(log);
                    log = FileLog::open_with(dir.path(), options.clone()).unwrap();
                    let got = log.last_index();
                    prop_assert!(got >= durable_floor && got <= last,
                        "after a crash the log ends at {got}, synced floor {durable_floor}, was {last}");
                    prop_assert!(log.first_index() <= first.min(got + 1));
                    prop_assert!(hard_states_since_sync.contains(&log.hard_state()));
                    all.truncate(got as usize);
                    first = log.first_index();
                    durable_floor = got;
                    hard_state = log.hard_state();
                    hard_states_since_sync = vec![hard_state];
                }
            }
            prop_assert_eq!(log.first_index(), first);
            prop_assert_eq!(log.last_index(), all.len() as Index);
            for e in &all[first as usize - 1..] {
                prop_assert_eq!(log.entry(e.index), Some(e.as_entry()));
            }
            if first > 1 {
                prop_assert_eq!(log.term(first - 1), Some(all[first as usize - 2].term));
            }
        }
    }
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
        for _ in 0..64 {
            index += 1;
            log.append(&Entry {
                index,
                term: 1,
                kind: EntryKind::Command,
                data: &payload,
            })
            .unwrap();
        }
        log.sync().unwrap();
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
