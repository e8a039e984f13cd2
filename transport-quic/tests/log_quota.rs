//! The log quota (`[storage] max_log_bytes`) with real node processes: a cluster written
//! far past its quota keeps taking writes (a full log is snapshotted and compacted, and
//! the room it frees is used again), and a quota that compaction could never get under
//! (smaller than what one segment and the largest entry take) is refused at start, with
//! the keys named and the smallest value that works.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{leader, spawn_with, wait_for, Proc, Setup, BIN};
use coracle_quic::protocol::Consistency;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const QUOTA: u64 = 8 << 20;

fn write_config(setup: &Setup, id: u64, storage: &str) -> PathBuf {
    let path = setup.path().join(format!("node-{id}.toml"));
    std::fs::write(
        &path,
        setup.config_text(id) + "[storage]\n" + storage + "\n",
    )
    .unwrap();
    path
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i:06}-").into_bytes();
    v.resize(100_000, b'a' + (i % 26) as u8);
    v
}

/// Bytes of the segment files of a data directory.
fn segment_bytes_on_disk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn a_cluster_written_five_times_past_its_quota_keeps_taking_writes() {
    let setup = Setup::new("quota", 3);
    // The quota of the report (8 MiB), with segments small enough for it; the default
    // 10 000 entries kept behind a snapshot (1 GB of these values) and no periodic
    // snapshot: only "the log is full" makes room.
    let storage = format!(
        "max_log_bytes = {QUOTA}\nsegment_bytes = 1048576\npreallocate = false\nsnapshot_entries = 0"
    );
    let mut procs: Vec<Proc> = (1..=3)
        .map(|id| spawn_with(&setup, id, &write_config(&setup, id, &storage)))
        .collect();
    let client = setup
        .client("client-alice")
        .with_timeout(Duration::from_secs(30));
    wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader within 20 s");
    // 400 puts of 100 KB: 40 MB through logs of 8 MiB (the report's wedge came after 109).
    let keys = 150;
    smol::block_on(async {
        for i in 0..400 {
            if let Err(e) = client.put(format!("k{:03}", i % keys), value(i)).await {
                panic!("put {i} failed: {e}");
            }
        }
        for i in 250..400 {
            let got = client.get(format!("k{:03}", i % keys)).await.unwrap();
            assert!(got.as_deref() == Some(&value(i)[..]), "k{:03}", i % keys);
        }
        // Linearizable reads of a full log's node work too (the report: with a quota of
        // one byte they failed).
        let listed = client
            .list("k", 20, Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(listed.len(), 20);
    });
    client.close();
    for (id, p) in procs.iter_mut().enumerate() {
        p.kill();
        let dir = setup.path().join(format!("data/node-{}", id + 1));
        let used = segment_bytes_on_disk(&dir);
        assert!(used <= QUOTA, "node {}: {used} bytes of segments", id + 1);
    }
}

/// Runs `coracle node` on a configuration expected to be refused; its standard error.
fn refused(setup: &Setup, storage: &str) -> String {
    let config = write_config(setup, 1, storage);
    let stderr = setup.path().join("refused.err");
    let mut node = Proc(Some(
        Command::new(BIN)
            .args(["node", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    ));
    // A refusal comes at once; 20 s is a generous bound for a loaded machine.
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the node was not refused with {storage:?}"
    );
    std::fs::read_to_string(stderr).unwrap()
}

#[test]
fn a_quota_compaction_cannot_get_under_is_refused_at_start() {
    let setup = Setup::new("quota-refused", 1);
    // The report's configuration: an 8 MiB quota with the default 64 MiB segments.
    let msg = refused(&setup, &format!("max_log_bytes = {QUOTA}"));
    for words in [
        "storage.max_log_bytes",
        "storage.segment_bytes",
        "raft.max_entry_bytes",
    ] {
        assert!(msg.contains(words), "{words:?} not in {msg}");
    }
    // The smallest quota that works with these settings is named, and it starts.
    let least: u64 = msg
        .split("at least ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no smallest value in {msg}"));
    assert!(least > QUOTA, "{msg}");
    let msg = refused(&setup, &format!("max_log_bytes = {}", least - 1));
    assert!(msg.contains(&format!("at least {least}")), "{msg}");
    // A quota of one byte: no entry, not even a leader's no-op, would ever fit.
    let msg = refused(&setup, "max_log_bytes = 1");
    assert!(msg.contains("storage.max_log_bytes"), "{msg}");
    // The smallest value named is accepted: the node starts and takes a write.
    let config = write_config(&setup, 1, &format!("max_log_bytes = {least}"));
    let _node = spawn_with(&setup, 1, &config);
    let client = setup.client("client-alice");
    smol::block_on(client.put("k", "v")).unwrap();
    client.close();
}
