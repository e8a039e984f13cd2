//! Snapshots with a fixed-capacity log (the protocol itself is in the transcripts
//! `snapshot_*.txt`, whose test host uses a growable log).

use crate::host::*;
use coracle::{ArrayLog, Config, LogStorage, Node};

#[test]
fn a_full_fixed_capacity_log_asks_the_host_for_a_snapshot() {
    let mut n: Node<ArrayLog<8, 4>> = Node::new(Config::new(1, 1), ArrayLog::new(), &[1]).unwrap();
    n.campaign();
    let mut needed = 0;
    for round in 0..20 {
        if round > 0 && n.propose(b"x").is_err() {
            // back-pressure, never a panic
        }
        needed += drain_outputs(&mut n)
            .iter()
            .filter(|o| *o == "SnapshotNeeded")
            .count();
    }
    assert!(needed >= 1, "the host was asked to snapshot");
    let applied = n.applied_index();
    let meta = n.snapshot_taken(applied).unwrap();
    assert_eq!(meta.index, applied);
    assert_eq!(n.log().first_index(), applied + 1, "compacted behind it");
    assert!(n.propose(b"y").is_ok());
}
