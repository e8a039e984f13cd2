//! When and how a board snapshots its counter table and compacts its flash log: the
//! policy both firmwares (QEMU and NUCLEO-F429ZI) share, tested here on the host.

use crate::counters::CounterTable;
use crate::journal::FlashLog;
use coracle::{Index, LogStorage, Node, StorageError};
use embedded_storage::nor_flash::NorFlash;

/// What a compaction did, for the firmware's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The snapshot's index: entries through it are gone from the log.
    pub through: Index,
    /// First index still in the log.
    pub first: Index,
    /// Last index in the log.
    pub last: Index,
    /// The flash bank in use and its generation.
    pub bank: (usize, u64),
    /// Bytes of the bank in use.
    pub flash_used: usize,
}

/// Why a due compaction did not happen (the board goes on; it tries again later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionError {
    /// The table does not fit the snapshot buffer.
    Encode,
    /// The applied index is not known to the node (its term was compacted away).
    Meta,
    /// The log refused the snapshot.
    Save(StorageError),
    /// The log refused to compact.
    Compact(StorageError),
}

/// Snapshots `table` at its applied index and compacts `node`'s log through it, when due:
/// `every` entries after the kept snapshot, when the node asked for a snapshot
/// (`needed`, cleared here), or when the flash bank is more than ¾ full. `Ok(None)` when not
/// due.
pub fn snapshot_and_compact<
    F: NorFlash,
    const CAP: usize,
    const DATA: usize,
    const SNAP: usize,
    const N: usize,
    const I: usize,
    const R: usize,
    const COUNTERS: usize,
>(
    node: &mut Node<FlashLog<F, CAP, DATA, SNAP>, N, I, R>,
    table: &CounterTable<COUNTERS>,
    every: u64,
    needed: &mut bool,
) -> Result<Option<Compacted>, CompactionError> {
    let applied = table.applied();
    let log = node.log();
    let kept = log.snapshot_meta().map_or(0, |m| m.index);
    let bank_full = log.used() * 4 > log.bank_size() * 3;
    let due = applied >= kept + every || *needed || bank_full;
    if applied <= kept || !due {
        return Ok(None);
    }
    *needed = false;
    let mut bytes = [0u8; SNAP];
    let len = table
        .encode(&mut bytes)
        .map_err(|_| CompactionError::Encode)?;
    let meta = node
        .snapshot_meta_at(applied, len as u64)
        .ok_or(CompactionError::Meta)?;
    node.log_mut()
        .save_snapshot(meta, &bytes[..len])
        .map_err(CompactionError::Save)?;
    node.compact(applied).map_err(CompactionError::Compact)?;
    let log = node.log();
    Ok(Some(Compacted {
        through: applied,
        first: log.first_index(),
        last: log.last_index(),
        bank: log.bank(),
        flash_used: log.used(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Add;
    use crate::journal::RamFlash;
    use coracle::{Config, Output};

    type Log = FlashLog<RamFlash<8192>, 32, 16, { CounterTable::<4>::ENCODED_LEN }>;

    fn drain(node: &mut Node<Log>, table: &mut CounterTable<4>) {
        loop {
            let mut sync = None;
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Sync(t) => sync = Some(t),
                    Output::Apply(e) => table.apply(&e).unwrap(),
                    _ => {}
                }
            }
            match sync {
                Some(t) => {
                    coracle_udp::node::Durable::sync(node.log_mut()).unwrap();
                    node.synced(t);
                }
                None => return,
            }
        }
    }

    #[test]
    fn a_board_compacts_every_few_entries_and_only_when_due() {
        let log = Log::open(RamFlash::new()).unwrap();
        let mut node: Node<Log> = Node::new(Config::new(1, 1), log, &[1]).unwrap();
        let mut table = CounterTable::<4>::new();
        node.campaign();
        drain(&mut node, &mut table);
        let mut needed = false;
        let mut compactions = 0;
        for i in 0..100u64 {
            let add = Add {
                counter: 1,
                delta: 1,
            };
            node.propose(&add.encode()).unwrap();
            drain(&mut node, &mut table);
            match snapshot_and_compact(&mut node, &table, 16, &mut needed).unwrap() {
                Some(c) => {
                    compactions += 1;
                    assert_eq!(c.through, table.applied());
                    assert_eq!(c.first, c.through + 1);
                }
                None => assert!(i < 15 || table.applied() < 16 * (compactions + 1)),
            }
        }
        assert!(compactions >= 5, "{compactions}");
        // Asked for a snapshot: compacts even before `every` entries.
        node.propose(
            &Add {
                counter: 1,
                delta: 1,
            }
            .encode(),
        )
        .unwrap();
        drain(&mut node, &mut table);
        needed = true;
        assert!(snapshot_and_compact(&mut node, &table, 1000, &mut needed)
            .unwrap()
            .is_some());
        assert!(!needed);
        // Nothing new applied: not due.
        assert_eq!(
            snapshot_and_compact(&mut node, &table, 1, &mut needed),
            Ok(None)
        );
    }
}
