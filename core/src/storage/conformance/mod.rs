//! Conformance suites a storage of your own can run: the tests the storages of this crate
//! and of its bindings pass, each panicking with the rule broken.
//!
//! - [`check`]: the contract of the node's memory log ([`LogStorage`]):
//!   `conformance::check(|| MyLog::new())`.
//! - [`durable`] (with `alloc`): the contract of the host's durable store, the one that
//!   performs [`Batch`](crate::Batch)es and survives crashes, checked against
//!   [`MemStore`](crate::MemStore) over seeded sequences of batches, syncs, crashes and
//!   reopens: `conformance::durable::check(&Options::default(), MyStore::new)`.

use super::*;

#[cfg(feature = "alloc")]
pub mod durable;

fn e(index: Index, term: Term, data: &[u8]) -> Entry<'_> {
    Entry {
        index,
        term,
        kind: EntryKind::Command,
        data,
    }
}

/// Runs every rule against fresh logs from `new` (each must be empty, with room for at
/// least 4 entries of 3 bytes and a 4-byte snapshot chunk).
pub fn check<S: LogStorage>(new: impl Fn() -> S) {
    append_truncate_compact(&mut new());
    hard_state_and_snapshot(&mut new());
    reset_after_a_snapshot(&mut new());
}

fn append_truncate_compact<S: LogStorage>(log: &mut S) {
    assert_eq!((log.first_index(), log.last_index()), (1, 0), "empty log");
    assert_eq!(log.term(0), Some(0), "index 0 has term 0");
    assert_eq!(log.term(1), None, "past the end");
    for i in 1..=4 {
        log.append(&e(i, i, b"abc")).expect("append");
    }
    assert_eq!(
        log.append(&e(9, 1, b"")),
        Err(StorageError::OutOfRange),
        "only the next index is appended"
    );
    assert_eq!(log.term(4), Some(4));
    assert_eq!(log.entry(2).map(|x| x.data), Some(&b"abc"[..]));
    log.truncate_suffix(3);
    assert_eq!(log.last_index(), 2, "truncated");
    assert_eq!(log.entry(3), None);
    assert_eq!(log.term(3), None);
    log.compact(1);
    assert_eq!(log.first_index(), 2, "compacted");
    assert_eq!(log.term(1), Some(1), "the compaction point's term is kept");
    assert_eq!(log.term(0), None, "compacted away");
    assert_eq!(log.entry(1), None);
    log.append(&e(3, 5, b"z")).expect("append after compaction");
    assert_eq!(log.entry(3).map(|x| x.data), Some(&b"z"[..]));
    log.compact(3);
    assert_eq!(
        (log.first_index(), log.last_index()),
        (4, 3),
        "all compacted"
    );
    assert_eq!(log.term(3), Some(5));
    log.append(&e(4, 5, b"w"))
        .expect("append to a compacted log");
    assert_eq!(log.last_index(), 4);
}

fn hard_state_and_snapshot<S: LogStorage>(log: &mut S) {
    assert_eq!(log.hard_state(), HardState::default());
    let hs = HardState {
        current_term: 3,
        voted_for: Some(2),
    };
    log.set_hard_state(hs);
    assert_eq!(log.hard_state(), hs);
    assert_eq!(log.snapshot_meta(), None);
    let meta = SnapshotMeta::new(7, 2, &[]).expect("meta");
    log.set_snapshot_meta(meta);
    assert_eq!(log.snapshot_meta(), Some(meta));
    log.stage_snapshot_chunk(b"abcd")
        .expect("a 4-byte chunk fits");
    assert_eq!(log.staged_snapshot_chunk(), b"abcd");
    log.stage_snapshot_chunk(b"xy")
        .expect("a chunk replaces the one held");
    assert_eq!(log.staged_snapshot_chunk(), b"xy");
}

fn reset_after_a_snapshot<S: LogStorage>(log: &mut S) {
    for i in 1..=3 {
        log.append(&e(i, 1, b"a")).expect("append");
    }
    log.reset(10, 4);
    assert_eq!(
        (log.first_index(), log.last_index()),
        (11, 10),
        "empty after 10"
    );
    assert_eq!(log.term(10), Some(4));
    assert_eq!(log.entry(2), None);
    log.append(&e(11, 4, b"b")).expect("append after a reset");
    assert_eq!(log.term(11), Some(4));
    log.release(11);
    assert!(log.term(11).is_some(), "terms are never released");
}
