//! Issue 16, measured: a leader with a large log on disk and a follower that far behind.
//! The follower catches up from the leader's log (no snapshot: `snapshot_entries = 0`), so
//! the leader reads every entry back from disk; its resident memory must stay bounded by
//! its configuration (`storage.memory_log_bytes`, 64 MiB by default), not by the log.
//!
//! Ignored by default: it writes the log three times (once per node; 4 GiB each by
//! default). Run it by hand, release build:
//!
//! ```sh
//! cargo test --release -p coracle-quic --test catch_up -- --ignored --nocapture
//! CORACLE_CATCH_UP_MIB=512 cargo test --release -p coracle-quic --test catch_up -- --ignored --nocapture
//! ```
//!
//! It prints the leader's peak resident memory during the catch-up and the catch-up rate,
//! and fails if the peak reaches 256 MiB (a memory bound, not a timing).
//! `CORACLE_CATCH_UP_MEMORY_LOG_BYTES` sets the nodes' `storage.memory_log_bytes`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{join_all, leader, proc_memory, spawn_with, wait_for, Proc, Setup};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bytes of each value (one entry each, about the same on disk).
const VALUE: usize = 64 << 10;
/// Distinct keys: the state machine stays small (4 MiB), the log grows.
const KEYS: usize = 64;
/// Writes in flight at once.
const WRITERS: usize = 16;
/// The leader's resident memory must stay below this.
const RSS_LIMIT: u64 = 256 << 20;

fn write_config(setup: &Setup, id: u64) -> PathBuf {
    let path = setup.path().join(format!("node-{id}.toml"));
    let mut text = setup.config_text(id) + "[storage]\nsnapshot_entries = 0\n";
    if let Ok(bytes) = std::env::var("CORACLE_CATCH_UP_MEMORY_LOG_BYTES") {
        text += &format!("memory_log_bytes = {bytes}\n");
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Resident memory of process `pid` (`VmRSS`), in bytes.
fn rss(pid: u32) -> Option<u64> {
    proc_memory(pid, "VmRSS")
}

#[test]
#[ignore = "writes the log 3 times (4 GiB each by default): run by hand, see the module docs"]
fn a_follower_far_behind_catches_up_while_the_leaders_memory_stays_bounded() {
    let mib: u64 = std::env::var("CORACLE_CATCH_UP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let writes = (mib << 20) as usize / VALUE;
    let setup = Setup::new("catch-up", 3);
    let configs: Vec<PathBuf> = (1..=3).map(|id| write_config(&setup, id)).collect();
    // Nodes 1 and 2 commit without node 3.
    let mut procs: Vec<Proc> = (1..=2)
        .map(|id| spawn_with(&setup, id, &configs[id as usize - 1]))
        .collect();
    let client = setup
        .client("client-alice")
        .with_timeout(Duration::from_secs(60));
    let leader_id = wait_for(Duration::from_secs(20), || {
        leader(&client, &setup.addrs[..2])
    })
    .expect("a leader within 20 s");
    let start = Instant::now();
    smol::block_on(async {
        let writer = |w: usize| {
            let client = &client;
            async move {
                for i in (w..writes).step_by(WRITERS) {
                    let mut value = vec![(i % 251) as u8; VALUE];
                    value[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    client
                        .put(format!("k{:02}", i % KEYS), value)
                        .await
                        .unwrap();
                }
            }
        };
        join_all((0..WRITERS).map(writer)).await;
    });
    let written = start.elapsed();
    let status = |id: u64| smol::block_on(client.status_of(setup.addrs[id as usize - 1]));
    let commit = status(leader_id).unwrap().commit;
    let pid = procs[leader_id as usize - 1].0.as_ref().unwrap().id();
    let before = rss(pid).unwrap();
    println!(
        "wrote {writes} entries of {} KiB ({mib} MiB) in {:.1} s; leader {leader_id} at index {commit}, {} MiB resident",
        VALUE >> 10,
        written.as_secs_f64(),
        before >> 20
    );

    // Node 3 starts with an empty log: everything comes from the leader's disk.
    procs.push(spawn_with(&setup, 3, &configs[2]));
    let start = Instant::now();
    let mut peak = before;
    let caught_up = wait_for(Duration::from_secs(3600), || {
        peak = peak.max(rss(pid).unwrap_or(0));
        let applied = status(3).map(|s| s.applied).unwrap_or(0);
        (applied >= commit).then_some(())
    });
    let took = start.elapsed().as_secs_f64();
    peak = peak.max(rss(pid).unwrap_or(0));
    client.close();
    assert!(
        caught_up.is_some(),
        "node 3 caught up within an hour (a liveness bound)"
    );
    let bytes = writes as f64 * VALUE as f64;
    println!(
        "node 3 caught up {:.0} MiB in {took:.1} s: {:.0} MiB/s; leader's peak resident memory {} MiB (limit {} MiB)",
        bytes / f64::from(1 << 20),
        bytes / f64::from(1 << 20) / took,
        peak >> 20,
        RSS_LIMIT >> 20
    );
    assert!(
        peak < RSS_LIMIT,
        "the leader's resident memory reached {} MiB",
        peak >> 20
    );
}
