//! Nodes whose memory holds a small part of their log (issue 16): `storage.memory_log_bytes`
//! of 1 MiB against 6 MiB of entries, no snapshot. A follower that was down catches up, so
//! the leader reads the entries it lacks back from disk (`Output::Fetch`); then the whole
//! cluster restarts cold and every node applies its log again from disk, a budget at a
//! time. Every acknowledged write is read back, from each node's own state.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{join_all, leader, spawn_with, wait_for, Proc, Setup};
use coracle_quic::protocol::Consistency;
use std::path::PathBuf;
use std::time::Duration;

const STORAGE: &str =
    "[storage]\nsnapshot_entries = 0\nmemory_log_bytes = 1048576\nsegment_bytes = 1048576\n";
/// 16 KiB values: 384 of them are 6 MiB, six times the memory budget.
const VALUE: usize = 16 << 10;
const WRITES: usize = 384;
/// A multiple of the 8 writers, so each key has one writer and its last value is known
/// (with 100 keys two writers raced on a key, and the test failed now and then).
const KEYS: usize = 96;

fn config(setup: &Setup, id: u64) -> PathBuf {
    let path = setup.path().join(format!("node-{id}.toml"));
    // AppendEntries of 64 KiB, so the budget (at least 4 of them) can be 1 MiB.
    let text = setup
        .config_text(id)
        .replace("[raft]\n", "[raft]\nmax_bytes_per_message = 65536\n")
        + STORAGE;
    std::fs::write(&path, text).unwrap();
    path
}

fn value(i: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; VALUE];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

/// Waits until node `id` has applied every entry the leader committed (a liveness bound
/// with a generous margin for a loaded machine).
fn caught_up(setup: &Setup, client: &coracle_quic::client::Client, leader_id: u64, id: u64) {
    let status = |id: u64| smol::block_on(client.status_of(setup.addrs[id as usize - 1])).ok();
    let commit = status(leader_id).unwrap().commit;
    wait_for(Duration::from_secs(60), || {
        status(id).filter(|s| s.applied >= commit).map(|_| ())
    })
    .unwrap_or_else(|| panic!("node {id} did not apply through {commit} within 60 s"));
}

#[test]
fn nodes_whose_memory_holds_a_sixth_of_the_log_catch_up_and_restart_from_disk() {
    let setup = Setup::new("bounded", 3);
    let configs: Vec<PathBuf> = (1..=3).map(|id| config(&setup, id)).collect();
    let mut procs: Vec<Proc> = (1..=2)
        .map(|id| spawn_with(&setup, id, &configs[id as usize - 1]))
        .collect();
    let client = setup
        .client("client-alice")
        .with_timeout(Duration::from_secs(30));
    let first = wait_for(Duration::from_secs(20), || {
        leader(&client, &setup.addrs[..2])
    })
    .expect("a leader within 20 s");
    smol::block_on(async {
        let writer = |w: usize| {
            let client = &client;
            async move {
                for i in (w..WRITES).step_by(8) {
                    client
                        .put(format!("k{:03}", i % KEYS), value(i))
                        .await
                        .unwrap();
                }
            }
        };
        join_all((0..8).map(writer)).await;
    });
    // Node 3 starts empty: the leader sends it 6 MiB of entries, most of them read back.
    procs.push(spawn_with(&setup, 3, &configs[2]));
    caught_up(&setup, &client, first, 3);

    // Cold restart: each node's memory log is filled with its newest megabyte; the rest is
    // read back to be applied again.
    for p in &mut procs {
        p.kill();
    }
    let procs: Vec<Proc> = (1..=3)
        .map(|id| spawn_with(&setup, id, &configs[id as usize - 1]))
        .collect();
    let second = wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader after the restart");
    // The last value of each key.
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = (WRITES - KEYS..WRITES)
        .map(|i| (format!("k{:03}", i % KEYS).into_bytes(), value(i)))
        .collect();
    expected.sort();
    for id in 1..=3 {
        caught_up(&setup, &client, second, id);
        // Each node's own state: a local read at that node.
        let addr = setup.addrs[id as usize - 1];
        let local = coracle_quic::client::Client::new(&setup.creds("client-alice"), vec![addr])
            .unwrap()
            .with_timeout(Duration::from_secs(10));
        let listed = smol::block_on(local.list("k", 1000, Consistency::Stale)).unwrap();
        assert_eq!(listed.len(), KEYS, "node {id}");
        assert!(listed == expected, "node {id} applied other values");
        local.close();
    }
    client.close();
    drop(procs);
}
