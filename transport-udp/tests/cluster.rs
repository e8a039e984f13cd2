//! Five smol node tasks over real UDP sockets on 127.0.0.1: a leader is
//! elected, writes commit on all, the leader is killed and another elected,
//! the killed node restarts from its durable store and catches up. Then the
//! same over a network that drops 20% of the datagrams and duplicates and
//! reorders some, and with stores that make writes durable later, on a task
//! of their own. Waits are bounded liveness checks, not timings.

mod common;

use std::time::Duration;

use common::{Cluster, Flush};

const WAIT: Duration = Duration::from_secs(20);

fn scenario(lossy: bool, flush: Flush) {
    smol::block_on(async {
        let mut cluster = Cluster::start_with(5, lossy, flush);
        let first = cluster.wait_leader(None, WAIT).await;

        let mut written = Vec::new();
        for i in 0..20 {
            let command = format!("a{i}").into_bytes();
            cluster.commit(&command, WAIT).await;
            written.push(command);
        }
        cluster.wait_applied(&written, WAIT).await;
        cluster.check_same_sequence();

        cluster.kill(first);
        let second = cluster.wait_leader(Some(first), WAIT).await;
        assert_ne!(second, first);
        for i in 0..20 {
            let command = format!("b{i}").into_bytes();
            cluster.commit(&command, WAIT).await;
            written.push(command);
        }
        cluster.wait_applied(&written, WAIT).await;

        cluster.restart(first);
        cluster.wait_applied(&written, WAIT).await;
        for i in 0..5 {
            let command = format!("c{i}").into_bytes();
            cluster.commit(&command, WAIT).await;
            written.push(command);
        }
        cluster.wait_applied(&written, WAIT).await;
        cluster.check_same_sequence();

        let status = cluster.status(first).await.expect("restarted node runs");
        // The restarted node resumed its send counter past the old one:
        // nobody dropped its datagrams as replays or too old.
        for id in cluster.running() {
            let s = cluster.status(id).await.expect("running");
            if !lossy {
                assert_eq!(s.drops.total(), 0, "node {id}: {:?}", s.drops);
            }
            assert_eq!(s.drops.forged, 0);
            assert_eq!(s.codec.too_large, 0);
            assert_eq!(s.codec.undecodable + s.codec.mismatched, 0);
        }
        assert!(status.applied_index >= written.len() as u64);
        if lossy {
            let faults = *cluster.faults.lock().expect("not poisoned");
            assert!(faults.dropped > 0 && faults.duplicated > 0 && faults.reordered > 0);
        }
    });
}

#[test]
fn five_nodes_elect_commit_survive_leader_loss_and_restart() {
    scenario(false, Flush::Now);
}

#[test]
fn five_nodes_make_progress_under_loss_duplication_and_reordering() {
    scenario(true, Flush::Now);
}

#[test]
fn five_nodes_whose_writes_become_durable_later_do_the_same() {
    scenario(false, Flush::Later);
}
