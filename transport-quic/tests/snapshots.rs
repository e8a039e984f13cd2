//! Snapshots over real QUIC endpoints (nodes in this test process, each with its own
//! endpoint, data directory and thread): a node that was down while the others snapshotted
//! and compacted past its log catches up through InstallSnapshot (in many chunks) and ends
//! with the same KV state; then the whole cluster restarts from disk after compaction, with
//! every write and the exactly-once session table still there.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{join_all, leader, wait_for, Setup};
use coracle_quic::client::Client;
use coracle_quic::config::NodeConfig;
use coracle_quic::host::{split_entry, LoggedCommand};
use coracle_quic::kv::Kv;
use coracle_quic::kv::SNAPSHOT_PAIRS_PER_STEP;
use coracle_quic::protocol::{Consistency, Request, Response, WriteOp, WriteOutcome};
use coracle_quic::server::RunningNode;
use coracle_quic::storage::FileLog;
use std::collections::BTreeMap;
use std::time::Duration;

/// Snapshot every 40 applied entries, keep 10 behind; small messages so a snapshot goes in
/// many chunks; small segments so compaction deletes files.
fn config(setup: &Setup, id: u64) -> NodeConfig {
    let text = setup
        .config_text(id)
        .replace("[raft]\n", "[raft]\nmax_bytes_per_message = 4096\n")
        + "[storage]\nsegment_bytes = 8192\nsnapshot_entries = 40\nsnapshot_keep_entries = 10\n";
    NodeConfig::parse(&text, setup.path()).unwrap()
}

/// Starts node `id`; retried while its address is still held by the endpoint of its
/// previous run, which closes in the background.
fn start(setup: &Setup, id: u64) -> RunningNode {
    wait_for(Duration::from_secs(10), || {
        RunningNode::start(&config(setup, id)).ok()
    })
    .expect("node starts")
}

/// A client that talks to node `id` only (stale reads there show its own state).
fn client_of(setup: &Setup, id: u64) -> Client {
    Client::new(
        &setup.creds("client-alice"),
        vec![setup.addrs[id as usize - 1]],
    )
    .unwrap()
    .with_timeout(Duration::from_secs(10))
}

/// Everything node `id` holds, read locally.
fn kv_of(setup: &Setup, id: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = client_of(setup, id);
    let all = smol::block_on(c.list("", 1_000_000, Consistency::Stale)).unwrap();
    c.close();
    all
}

/// Waits until every node in `ids` has applied the leader's commit index.
fn wait_applied(setup: &Setup, client: &Client, ids: &[u64]) {
    let done = wait_for(Duration::from_secs(30), || {
        smol::block_on(async {
            let l = leader(client, &setup.addrs)?;
            let commit = client
                .status_of(setup.addrs[l as usize - 1])
                .await
                .ok()?
                .commit;
            for &id in ids {
                let s = client.status_of(setup.addrs[id as usize - 1]).await.ok()?;
                if s.applied < commit {
                    return None;
                }
            }
            Some(())
        })
    });
    assert!(done.is_some(), "nodes {ids:?} did not catch up");
}

/// Index of the snapshot in node `id`'s data directory (read from the file's header).
fn snapshot_index(setup: &Setup, id: u64) -> u64 {
    let path = config(setup, id).data_dir.join("snapshot");
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .get(12..20)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

fn value(i: usize) -> String {
    format!("{i:04}-{}", "v".repeat(150))
}

/// A write with an explicit session and sequence number (to retry it verbatim later).
fn session_write() -> Request {
    Request::Write {
        client: 0xfeed,
        seq: 1,
        ack_below: 1,
        op: WriteOp::Put {
            key: b"session".to_vec(),
            value: b"first".to_vec(),
            // Asked for: a retry answered `None` shows it was not applied again.
            return_previous: true,
        },
    }
}

#[test]
fn a_node_down_past_the_compaction_point_catches_up_through_a_snapshot_and_restarts() {
    let setup = Setup::new("snap", 3);
    let mut nodes: Vec<Option<RunningNode>> = (1..=3).map(|id| Some(start(&setup, id))).collect();
    let client = setup.client("client-alice");
    let first = wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader within 20 s");
    let mut model = BTreeMap::new();
    smol::block_on(async {
        for i in 0..10 {
            client.put(format!("k{i:03}"), value(i)).await.unwrap();
            model.insert(format!("k{i:03}"), value(i));
        }
        let answer = client.call(&session_write()).await.unwrap();
        assert!(matches!(
            answer,
            Response::Written {
                outcome: WriteOutcome::Done { previous: None },
                ..
            }
        ));
        model.insert("session".into(), "first".into());
    });

    // A follower goes down with a short log.
    let down = (1..=3).find(|&id| id != first).unwrap();
    wait_applied(&setup, &client, &[down]);
    nodes[down as usize - 1].take().unwrap().shutdown().unwrap();
    let down_last = {
        let log = FileLog::open(config(&setup, down).data_dir).unwrap();
        log.last_index()
    };

    // The others go on, snapshot and compact far past it.
    smol::block_on(async {
        for i in 10..200 {
            let key = format!("k{:03}", i % 150);
            if i % 13 == 0 {
                client.delete(key.clone()).await.unwrap();
                model.remove(&key);
            } else {
                client.put(key.clone(), value(i)).await.unwrap();
                model.insert(key, value(i));
            }
        }
        // The session write again is answered from the session table, not applied twice.
        client.put("session", "second").await.unwrap();
        model.insert("session".into(), "second".into());
    });
    let others: Vec<u64> = (1..=3).filter(|&id| id != down).collect();
    wait_applied(&setup, &client, &others);
    for &id in &others {
        let s = snapshot_index(&setup, id);
        assert!(
            s > down_last + 10 + 1,
            "node {id} compacted only through {s} - 10, node {down} has {down_last}"
        );
    }

    // It comes back: the leader no longer has the entries it needs, only the snapshot.
    // Writes go on meanwhile, so the leader may replace its snapshot during the transfer
    // (the transfer then restarts with the new one).
    nodes[down as usize - 1] = Some(start(&setup, down));
    smol::block_on(async {
        for i in 0..120 {
            client.put(format!("bg{i:03}"), value(i)).await.unwrap();
            model.insert(format!("bg{i:03}"), value(i));
        }
    });
    wait_applied(&setup, &client, &[1, 2, 3]);
    let expected: Vec<(Vec<u8>, Vec<u8>)> = model
        .iter()
        .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
        .collect();
    for id in 1..=3 {
        assert_eq!(kv_of(&setup, id), expected, "KV state of node {id}");
    }
    assert!(
        snapshot_index(&setup, down) > down_last,
        "node {down} keeps the snapshot it installed"
    );

    // A cold restart of the whole cluster, from snapshots and compacted logs.
    client.close();
    for n in &mut nodes {
        n.take().unwrap().shutdown().unwrap();
    }
    for id in 1..=3 {
        let log = FileLog::open(config(&setup, id).data_dir).unwrap();
        assert!(log.snapshot().is_some(), "node {id} has a snapshot");
        assert!(log.first_index() > 1, "node {id} compacted its log");
    }
    let nodes: Vec<RunningNode> = (1..=3).map(|id| start(&setup, id)).collect();
    let client = setup.client("client-alice");
    wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader after the restart");
    smol::block_on(async {
        for (k, v) in &model {
            let got = client.get(k.clone()).await.unwrap();
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "{k}");
        }
        // The retried write is still recognized: its first outcome, "session" unchanged.
        let answer = client.call(&session_write()).await.unwrap();
        assert!(
            matches!(
                answer,
                Response::Written {
                    outcome: WriteOutcome::Done { previous: None },
                    ..
                }
            ),
            "{answer:?}"
        );
        let v = client.get("session").await.unwrap();
        assert_eq!(v.as_deref(), Some(&b"second"[..]));
    });
    wait_applied(&setup, &client, &[1, 2, 3]);
    for id in 1..=3 {
        assert_eq!(kv_of(&setup, id), expected, "node {id} after the restart");
    }
    client.close();
    for n in nodes {
        n.shutdown().unwrap();
    }
}

#[test]
fn a_full_log_is_snapshotted_and_compacted_to_make_room() {
    let setup = Setup::new("snap-full", 1);
    // No periodic snapshots: only "the log is full" (a 24 KiB quota) triggers them.
    let text = setup
        .config_text(1)
        .replace("[raft]\n", "[raft]\nmax_entry_bytes = 2048\n")
        + "[storage]\nsegment_bytes = 2048\nmax_log_bytes = 24576\nsnapshot_entries = 0\n";
    let cfg = NodeConfig::parse(&text, setup.path()).unwrap();
    let node = RunningNode::start(&cfg).unwrap();
    let client = setup.client("client-alice");
    smol::block_on(async {
        // About 100 KiB of writes through a 24 KiB log.
        for i in 0..500 {
            client
                .put(format!("k{:03}", i % 300), value(i))
                .await
                .unwrap();
        }
        for i in 200..500 {
            let got = client.get(format!("k{:03}", i % 300)).await.unwrap();
            assert_eq!(got, Some(value(i).into_bytes()));
        }
    });
    client.close();
    node.shutdown().unwrap();
    let log = FileLog::open(&cfg.data_dir).unwrap();
    assert!(log.snapshot().is_some());
    assert!(log.disk_bytes() <= 24576);
    assert!(log.first_index() > 100);
}

#[test]
fn a_full_log_whose_snapshot_cannot_be_saved_loses_nothing() {
    let setup = Setup::new("snap-unsaved", 1);
    let text = setup
        .config_text(1)
        .replace("[raft]\n", "[raft]\nmax_entry_bytes = 2048\n")
        + "[storage]\nsegment_bytes = 2048\nmax_log_bytes = 24576\nsnapshot_entries = 0\n";
    let cfg = NodeConfig::parse(&text, setup.path()).unwrap();
    let node = RunningNode::start(&cfg).unwrap();
    // Directories where the snapshot's temporary files go (one per index): every save
    // fails, the log itself stays healthy.
    let blockers: Vec<_> = (1..=1000)
        .map(|i| cfg.data_dir.join(format!("snapshot.saving-{i}.tmp")))
        .collect();
    for b in &blockers {
        std::fs::create_dir(b).unwrap();
    }
    let client = setup
        .client("client-alice")
        .with_timeout(Duration::from_secs(3));
    let acknowledged = smol::block_on(async {
        let mut n = 0;
        while n < 500 && client.put(format!("k{n:03}"), value(n)).await.is_ok() {
            n += 1;
        }
        n
    });
    assert!(acknowledged < 500, "the log never filled up");
    client.close();
    node.shutdown().unwrap();
    // Nothing was compacted behind a snapshot that was never saved.
    for b in &blockers {
        std::fs::remove_dir(b).unwrap();
    }
    let log = FileLog::open(&cfg.data_dir).unwrap();
    assert!(log.snapshot().is_none());
    assert_eq!(log.first_index(), 1);
    drop(log);
    // Restarted with a writable directory: every acknowledged write is there, and the full
    // log snapshots and compacts to make room.
    let node = RunningNode::start(&cfg).unwrap();
    let client = setup.client("client-alice");
    smol::block_on(async {
        for i in 0..acknowledged {
            let got = client.get(format!("k{i:03}")).await.unwrap();
            assert_eq!(got, Some(value(i).into_bytes()), "write {i} lost");
        }
        for i in 0..100 {
            client.put(format!("after{i}"), "x").await.unwrap();
        }
    });
    client.close();
    node.shutdown().unwrap();
    assert!(FileLog::open(&cfg.data_dir).unwrap().snapshot().is_some());
}

#[test]
fn a_snapshot_of_many_steps_is_taken_while_writes_go_on() {
    let setup = Setup::new("snap-steps", 1);
    let text =
        setup.config_text(1) + "[storage]\nsnapshot_entries = 9000\nsnapshot_keep_entries = 10\n";
    let cfg = NodeConfig::parse(&text, setup.path()).unwrap();
    let node = RunningNode::start(&cfg).unwrap();
    let client = setup.client("client-alice");
    // 12 000 keys, then 4 000 of them again, by 16 writers that each wait for their answer:
    // the snapshot (due at index 12 000 for node 1) takes several turns of the node's loop
    // to write out, and the writes keep coming meanwhile, new keys and overwrites alike.
    let (keys, writes, writers) = (12_000, 16_000, 16);
    let key = |i: usize| format!("k{:05}", i % keys);
    smol::block_on(async {
        let writer = |w: usize| {
            let client = &client;
            async move {
                for i in (w..writes).step_by(writers) {
                    client.put(key(i), value(i)).await.unwrap();
                }
            }
        };
        join_all((0..writers).map(writer)).await;
    });
    client.close();
    node.shutdown().unwrap();
    let mut last = BTreeMap::new();
    for i in 0..writes {
        last.insert(key(i).into_bytes(), value(i).into_bytes());
    }
    let expected: Vec<_> = last.into_iter().collect();

    // The snapshot and the log after it make the final state.
    let log = FileLog::open(&cfg.data_dir).unwrap();
    let snapshot = log.snapshot().expect("a snapshot was saved");
    let mut file = log.reader().snapshot(snapshot.meta.index).unwrap().unwrap();
    // The host's part first (the addresses), then the KV store's bytes.
    coracle_quic::host::open_snapshot(&mut file).unwrap();
    let mut kv = Kv::restore_from(&mut file).unwrap();
    assert_eq!(kv.applied(), snapshot.meta.index);
    assert!(
        kv.len() > SNAPSHOT_PAIRS_PER_STEP,
        "{} pairs: one step",
        kv.len()
    );
    // Nothing written after its index leaked into it (each value is written once).
    let at_snapshot = kv.list(b"", usize::MAX);
    let mut later = std::collections::BTreeSet::new();
    for index in snapshot.meta.index + 1..=log.last_index() {
        let entry = log
            .reader()
            .entries(index, index, 0)
            .unwrap()
            .pop()
            .unwrap();
        match entry.kind {
            coracle::EntryKind::Command => match split_entry(&entry.data).unwrap() {
                LoggedCommand::Command(command) => {
                    if let Ok(coracle_quic::protocol::Command::Write {
                        op: WriteOp::Put { value, .. },
                        ..
                    }) = postcard::from_bytes(command)
                    {
                        later.insert(value);
                    }
                    kv.apply(index, command);
                }
                LoggedCommand::Host(_) => kv.skip(index),
            },
            _ => kv.skip(index),
        }
    }
    assert!(
        later.len() > 64,
        "writes went on after the snapshot's index"
    );
    for (k, v) in &at_snapshot {
        assert!(
            !later.contains(v),
            "{k:?} has a value written after the snapshot"
        );
    }
    assert_eq!(kv.list(b"", usize::MAX), expected);
    drop(log);

    // And a restart from them serves it (retried while the old endpoint lets go of the
    // address).
    let node =
        wait_for(Duration::from_secs(10), || RunningNode::start(&cfg).ok()).expect("node restarts");
    let client = setup.client("client-alice");
    let all = smol::block_on(client.list("", 1_000_000, Consistency::Linearizable)).unwrap();
    assert_eq!(all, expected);
    client.close();
    node.shutdown().unwrap();
}
