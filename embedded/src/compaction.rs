//! When a board snapshots its counter table and compacts its log: the policy both firmwares
//! (QEMU and NUCLEO-F429ZI) share, tested here on the host.
//!
//! The snapshot goes to the flash journal ([`FlashJournal::save_taken`]), the node keeps it
//! (`Node::snapshot_taken`) and compacts its memory log; the batch it emits next writes the
//! snapshot and the compaction point to the journal, which rewrites its bank later, in steps
//! ([`FlashJournal::step`]).

use crate::counters::CounterTable;
use crate::journal::{FlashJournal, JournalFlash};
use coracle::{Index, LogStorage, Node, SnapshotError, StorageError};

/// What a compaction did, for the firmware's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The snapshot's index: entries through it are gone from the log.
    pub through: Index,
    /// First index still in the log.
    pub first: Index,
    /// Last index in the log.
    pub last: Index,
}

/// Why a due compaction did not happen (the board goes on; it tries again later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionError {
    /// The table does not fit the snapshot buffer.
    Encode,
    /// The journal refused the snapshot (larger than its buffer).
    Save(StorageError),
    /// The node refused the snapshot.
    Snapshot(SnapshotError),
}

/// Snapshots `table` at its applied index into `journal` and has `node` keep it and compact
/// its log through it, when due: `every` entries after the kept snapshot, or when the node
/// asked for a snapshot (`needed`, cleared here). `Ok(None)` when not due.
pub fn snapshot_and_compact<
    F: JournalFlash,
    S: LogStorage,
    const SNAP: usize,
    const N: usize,
    const I: usize,
    const R: usize,
    const COUNTERS: usize,
>(
    node: &mut Node<S, N, I, R>,
    journal: &mut FlashJournal<F, SNAP>,
    table: &CounterTable<COUNTERS>,
    every: u64,
    needed: &mut bool,
) -> Result<Option<Compacted>, CompactionError> {
    let applied = table.applied();
    let kept = node.log().snapshot_meta().map_or(0, |m| m.index);
    let due = applied >= kept + every || *needed;
    if applied <= kept || !due {
        return Ok(None);
    }
    *needed = false;
    let mut bytes = [0u8; SNAP];
    let len = table
        .encode(&mut bytes)
        .map_err(|_| CompactionError::Encode)?;
    journal
        .save_taken(applied, &bytes[..len])
        .map_err(CompactionError::Save)?;
    node.snapshot_taken(applied)
        .map_err(CompactionError::Snapshot)?;
    let log = node.log();
    Ok(Some(Compacted {
        through: applied,
        first: log.first_index(),
        last: log.last_index(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Add;
    use crate::journal::{Persisted, RamFlash};
    use coracle::{ArrayLog, Config, Output};

    const SNAP: usize = CounterTable::<4>::ENCODED_LEN;
    type Log = ArrayLog<32, 16, SNAP>;
    type Journal = FlashJournal<RamFlash<8192>, SNAP>;

    /// Drains `node` like a board: batches to the journal, entries to the table, a
    /// maintenance step after each drain.
    fn drain(node: &mut Node<Log>, journal: &mut Journal, table: &mut CounterTable<4>) {
        loop {
            let mut durable = None;
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Persist(batch) => {
                        assert_eq!(journal.persist(&batch.batch()), Ok(Persisted::Durable));
                        durable = Some(batch.token);
                    }
                    Output::Apply(e) => table.apply(&e).unwrap(),
                    _ => {}
                }
            }
            match durable {
                Some(t) => node.persisted(t),
                None => break,
            }
        }
        journal.step(node.log()).unwrap();
    }

    #[test]
    fn a_board_compacts_every_few_entries_and_only_when_due() {
        let mut log = Log::new();
        let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
        journal.set_rewrite_above(1024);
        let mut node: Node<Log> = Node::new(Config::new(1, 1), log, &[1]).unwrap();
        let mut table = CounterTable::<4>::new();
        node.campaign();
        drain(&mut node, &mut journal, &mut table);
        let mut needed = false;
        let mut compactions = 0;
        let add = Add {
            counter: 1,
            delta: 1,
        };
        for i in 0..100u64 {
            node.propose(&add.encode()).unwrap();
            drain(&mut node, &mut journal, &mut table);
            match snapshot_and_compact(&mut node, &mut journal, &table, 16, &mut needed).unwrap() {
                Some(c) => {
                    compactions += 1;
                    assert_eq!(c.through, table.applied());
                    assert_eq!(c.first, c.through + 1);
                    drain(&mut node, &mut journal, &mut table);
                }
                None => assert!(i < 15 || table.applied() < 16 * (compactions + 1)),
            }
        }
        assert!(compactions >= 5, "{compactions}");
        assert!(journal.rewrites() > 0, "the journal rewrote its bank");
        // Asked for a snapshot: compacts even before `every` entries.
        node.propose(&add.encode()).unwrap();
        drain(&mut node, &mut journal, &mut table);
        needed = true;
        assert!(
            snapshot_and_compact(&mut node, &mut journal, &table, 1000, &mut needed)
                .unwrap()
                .is_some()
        );
        assert!(!needed);
        drain(&mut node, &mut journal, &mut table);
        // Nothing new applied: not due.
        assert_eq!(
            snapshot_and_compact(&mut node, &mut journal, &table, 1, &mut needed),
            Ok(None)
        );
        // A reboot finds the table's snapshot and the log after it.
        while journal.pending() {
            journal.step(node.log()).unwrap();
        }
        let mut log = Log::new();
        let journal = Journal::open(journal.into_flash(), &mut log).unwrap();
        let (meta, bytes) = journal.snapshot().expect("a snapshot");
        let restored = CounterTable::<4>::decode(bytes).unwrap();
        assert_eq!(restored.applied(), meta.index);
        assert_eq!(restored.digest(), table.digest());
        assert_eq!(log.snapshot_meta(), Some(*meta));
        assert_eq!(log.first_index(), meta.index + 1);
    }
}
