//! The host's durable store behind a node over UDP (smol tasks on
//! 127.0.0.1): a follower that was down gets the snapshot its peers kept,
//! read from their stores in chunks that fit a datagram; a leader whose
//! memory log holds only its newest entries reads older ones back from its
//! store for a follower that needs them. Waits are bounded liveness checks.

mod common;

use std::time::Duration;

use common::{Cluster, Flush};
use coracle::{CachedLog, Config};
use coracle_udp::codec::max_snapshot_chunk_bytes;
use coracle_udp::DEFAULT_MTU;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_follower_that_was_down_installs_the_snapshot_sent_in_datagram_sized_chunks() {
    smol::block_on(async {
        let mut cluster = Cluster::start(3, false);
        let leader = cluster.wait_leader(None, WAIT).await;
        let away = cluster.follower_of(leader);
        cluster.kill(away);
        let mut written = Vec::new();
        for i in 0..30u8 {
            let command = vec![i; 120];
            cluster.commit(&command, WAIT).await;
            written.push(command);
        }
        cluster.wait_applied(&written, WAIT).await;
        // Every running node snapshots its state and compacts its log: the
        // node that was away is behind every log.
        for id in cluster.running() {
            cluster.snapshot(id).await;
        }
        let snapshot_len = {
            let m = cluster.members.iter().find(|m| m.id == leader).unwrap();
            let store = m.stores.durable.lock().unwrap();
            store.snapshot.as_ref().expect("kept").1.len()
        };
        assert!(
            snapshot_len > 3 * max_snapshot_chunk_bytes(DEFAULT_MTU),
            "a snapshot of {snapshot_len} bytes takes several datagrams"
        );
        cluster.restart(away);
        for i in 0..3u8 {
            let command = vec![100 + i; 10];
            cluster.commit(&command, WAIT).await;
            written.push(command);
        }
        cluster.wait_applied(&written, WAIT).await;
        cluster.check_same_sequence();
        let m = cluster.members.iter().find(|m| m.id == away).unwrap();
        let installed = m.stores.durable.lock().unwrap().snapshot.clone();
        let (meta, bytes) = installed.expect("the follower keeps the snapshot it installed");
        assert_eq!(bytes.len(), snapshot_len);
        assert!(meta.index >= 30);
        for id in cluster.running() {
            let s = cluster.status(id).await.expect("running");
            assert_eq!(s.codec.too_large, 0, "node {id}");
            assert_eq!(s.drops.total(), 0, "node {id}: {:?}", s.drops);
        }
    });
}

fn small_cache() -> CachedLog {
    CachedLog::new(2048)
}

#[test]
fn a_leader_reads_entries_its_memory_dropped_back_from_its_store() {
    smol::block_on(async {
        let mut cluster =
            Cluster::start_full(3, false, Flush::Now, small_cache, |_: &mut Config| {});
        let leader = cluster.wait_leader(None, WAIT).await;
        let away = cluster.follower_of(leader);
        cluster.commit(b"first", WAIT).await;
        cluster.kill(away);
        let mut written = vec![b"first".to_vec()];
        for i in 0..60u8 {
            let command = vec![i; 200];
            cluster.commit(&command, WAIT).await;
            written.push(command);
        }
        cluster.restart(away);
        cluster.wait_applied(&written, WAIT).await;
        cluster.check_same_sequence();
        let leader = cluster.wait_leader(None, WAIT).await;
        let s = cluster.status(leader).await.expect("running");
        assert!(
            s.core.fetches > 0,
            "the leader fetched nothing: {:?}",
            s.core
        );
        assert_eq!(s.driver.fetch_failures, 0);
    });
}
