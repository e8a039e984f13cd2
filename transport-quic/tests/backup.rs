//! Backup and restore as processes over loopback (issue 19): keys written to a 3-node
//! cluster are saved with `coracle admin snapshot save`, restored with `coracle node
//! restore` into the data directories of a new 3-node cluster (another cluster id, the same
//! CA), and read back from it; an old-cluster node pointed at the new cluster's addresses
//! is refused. Bad backup files and directories end with a clear error and nothing changed.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::*;
use coracle_quic::backup::{BackupHeader, BackupWriter};
use coracle_quic::client::{Client, ClientError};
use coracle_quic::protocol::{AdminOp, Consistency, ErrorKind, Request};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const KEYS: usize = 50;

/// `coracle node restore FILE --config CONFIG`.
fn restore(file: &Path, config: &Path) -> Output {
    std::process::Command::new(BIN)
        .args(["node", "restore"])
        .arg(file)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// The text of a configuration of the new cluster: node `id` of cluster 8 on `addrs`, with
/// its data in `data/new-{id}` (the certificates are the old cluster's: same CA).
fn new_config(setup: &Setup, id: u64, addrs: &[SocketAddr]) -> String {
    let mut text = setup
        .config_text(id)
        .replace("cluster_id = 7", "cluster_id = 8")
        .replace(&format!("data/node-{id}"), &format!("data/new-{id}"));
    for (old, new) in setup.addrs.iter().zip(addrs) {
        text = text.replace(&format!("\"{old}\""), &format!("\"{new}\""));
    }
    text
}

/// The configuration files `new-{id}.toml` of the 3 nodes of the new cluster, on `addrs`.
fn new_configs(setup: &Setup, addrs: &[SocketAddr]) -> Vec<PathBuf> {
    (1..=3)
        .map(|id| {
            let text = new_config(setup, id, addrs);
            write(setup, &format!("new-{id}.toml"), &text)
        })
        .collect()
}

fn write(setup: &Setup, name: &str, text: &str) -> PathBuf {
    let path = setup.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Every file under `dir` with its bytes (empty when `dir` is missing).
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push((e.path(), std::fs::read(e.path()).unwrap()));
        }
    }
    out.sort();
    out
}

/// Starts the restored nodes of `configs` (on `addrs`) and a client of them, once they
/// have a leader.
fn start_new_cluster(
    setup: &Setup,
    configs: &[PathBuf],
    addrs: &[SocketAddr],
) -> (Vec<Proc>, Client) {
    let nodes = spawn_all(setup, configs);
    let client = Client::new(&setup.creds("client-alice"), addrs.to_vec())
        .unwrap()
        .with_timeout(Duration::from_secs(20))
        .with_attempt_timeout(Duration::from_secs(2));
    wait_for(Duration::from_secs(30), || leader(&client, addrs)).expect(
        "a leader of the new cluster within 30 s (generous: a shared machine, 40 MiB to load)",
    );
    (nodes, client)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_backup_restores_into_a_new_cluster_that_the_old_cannot_reach() {
    let setup = Setup::new("backup", 3);
    let mut old = (1..=3).map(|id| spawn_node(&setup, id)).collect::<Vec<_>>();
    let client = setup.client("client-alice");
    wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader within 20 s (generous: a shared machine)");
    smol::block_on(async {
        for i in 0..KEYS {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });

    // Save.
    let file = setup.path().join("cluster.backup");
    let saved = admin_command(&setup, &[1, 2, 3])
        .args(["snapshot", "save"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(saved.status.success(), "save: {}", stderr(&saved));
    let said = String::from_utf8_lossy(&saved.stdout);
    assert!(said.contains("of cluster 7"), "{said}");

    // The one-frame backup of older clients is refused with what to do.
    let ops = setup.client("admin-ops");
    let e = smol::block_on(ops.call(&Request::Admin(AdminOp::Backup))).unwrap_err();
    assert!(
        matches!(&e, ClientError::Server { kind: ErrorKind::Failed, message, .. } if message.contains("streamed")),
        "{e}"
    );
    ops.close();

    // A non-admin certificate may not take one.
    let alice = std::process::Command::new(BIN)
        .args([
            "admin",
            "--nodes",
            &setup.addrs[0].to_string(),
            "--name",
            "alice",
        ])
        .arg("--certs")
        .arg(setup.certs())
        .args(["snapshot", "save"])
        .arg(setup.path().join("alice.backup"))
        .output()
        .unwrap();
    assert!(!alice.status.success());
    assert!(!setup.path().join("alice.backup").exists());

    // Restore into the directories of a new cluster.
    let addrs = free_addrs(3);
    let configs = new_configs(&setup, &addrs);
    // Into the old cluster's id: refused, nothing written.
    let same = write(
        &setup,
        "same.toml",
        &setup.config_text(1).replace("node-1\"", "same-1\""),
    );
    let refused = restore(&file, &same);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("new cluster_id"),
        "{}",
        stderr(&refused)
    );
    assert!(!setup.path().join("data/same-1").exists());
    for config in &configs {
        let o = restore(&file, config);
        assert!(o.status.success(), "restore: {}", stderr(&o));
    }
    // Again into a directory now holding data: refused, the directory unchanged.
    let before = contents(&setup.path().join("data/new-1"));
    let again = restore(&file, &configs[0]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));
    assert_eq!(contents(&setup.path().join("data/new-1")), before);

    let (mut new, new_client) = start_new_cluster(&setup, &configs, &addrs);
    read_back(&new_client, 0..KEYS);
    smol::block_on(async {
        // The new cluster takes writes; the old one does not see them.
        new_client.put("after", "restore").await.unwrap();
        assert_eq!(client.get("after").await.unwrap(), None);
    });

    // An old-cluster node put in the place of new node 3 (its address, the same CA and
    // node certificate, the old cluster id and data): the new nodes refuse it at the hello
    // ("hello of another cluster", counted as a malformed frame) and never count it as
    // connected.
    new[2].kill();
    old[2].kill();
    let malformed = |client: &Client| -> u64 {
        smol::block_on(client.statuses(&addrs[..2]))
            .into_iter()
            .flatten()
            .map(|s| s.malformed_frames)
            .sum()
    };
    let before = malformed(&new_client);
    let mut impostor_text = setup.config_text(3);
    for (old_addr, new_addr) in setup.addrs.iter().zip(&addrs) {
        impostor_text =
            impostor_text.replace(&format!("\"{old_addr}\""), &format!("\"{new_addr}\""));
    }
    let impostor_config = write(&setup, "impostor.toml", &impostor_text);
    let _impostor = spawn_with(&setup, 3, &impostor_config);
    let another_cluster = || {
        [1, 2].iter().any(|&id| {
            std::fs::read_to_string(node_log(&setup, id))
                .unwrap_or_default()
                .contains("hello of another cluster")
        })
    };
    let refused = wait_for(Duration::from_secs(20), || {
        (another_cluster() && malformed(&new_client) > before).then_some(())
    });
    assert!(
        refused.is_some(),
        "the new nodes refused the old cluster's node within 20 s (generous)"
    );
    // Nothing flows between them: the new cluster's write never reaches the old node.
    smol::block_on(new_client.put("still", "writable")).unwrap();
    let on_impostor = Client::new(&setup.creds("client-alice"), vec![addrs[2]])
        .unwrap()
        .with_timeout(Duration::from_secs(20))
        .with_attempt_timeout(Duration::from_secs(1));
    let seen = smol::block_on(on_impostor.get_with("still", Consistency::Stale)).unwrap();
    assert_eq!(
        seen, None,
        "the old cluster's node got the new cluster's write"
    );
    on_impostor.close();
    client.close();
    new_client.close();
}

#[test]
fn bad_backup_files_are_refused_and_nothing_is_written() {
    let setup = Setup::new("backup-bad", 1);
    let config = write(&setup, "new.toml", &new_config(&setup, 1, &free_addrs(1)));
    let data = setup.path().join("data/new-1");

    // A valid backup, built through the library's format (its state a KV store).
    let kv = {
        let mut kv = coracle_quic::kv::Kv::new();
        kv.skip(5);
        kv
    };
    let file = setup.path().join("b.backup");
    let encode = |state: &[u8]| {
        let header = BackupHeader {
            cluster: 7,
            index: 5,
            term: 2,
            members: vec![],
            state_len: state.len() as u64,
        };
        let mut w = BackupWriter::create(&file, &header).unwrap();
        w.write_all(state).unwrap();
        w.finish().unwrap();
        std::fs::read(&file).unwrap()
    };
    let good = encode(&kv.snapshot().unwrap());

    let missing = restore(&setup.path().join("nope.backup"), &config);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("nope.backup"),
        "{}",
        stderr(&missing)
    );
    assert!(!data.exists());

    let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [0, 7, 20, 44, good.len() / 2, good.len() - 1] {
        damaged.push((format!("truncated to {cut}"), good[..cut].to_vec()));
    }
    for at in [0, 9, 14, 22, 30, 37, 41, good.len() - 6, good.len() - 2] {
        let mut b = good.clone();
        b[at] ^= 0x5a;
        damaged.push((format!("byte {at} flipped"), b));
    }
    damaged.push(("garbage".into(), b"garbage, not a backup".to_vec()));
    for (what, bytes) in damaged {
        std::fs::write(&file, &bytes).unwrap();
        let o = restore(&file, &config);
        assert!(!o.status.success(), "{what}");
        let e = stderr(&o);
        assert!(
            e.contains("b.backup") && e.contains("damaged"),
            "{what}: {e}"
        );
        assert!(!data.exists(), "{what}: the data directory was created");
    }

    // A checksummed file whose state is no KV store.
    encode(b"not a kv store");
    let o = restore(&file, &config);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("state"), "{}", stderr(&o));
    assert!(!data.exists());

    // A data directory holding anything is left alone.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("keep.me"), b"x").unwrap();
    std::fs::write(&file, &good).unwrap();
    let o = restore(&file, &config);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    assert_eq!(contents(&data).len(), 1);

    // The good file into an empty directory: seeded.
    std::fs::remove_file(data.join("keep.me")).unwrap();
    let o = restore(&file, &config);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(data.join("snapshot").exists());
}

/// Keys of the large backup, and bytes of each value: 40 MiB of values, more than the
/// 16 MiB a backup carried when it was one client frame.
const LARGE_KEYS: usize = 640;
const LARGE_VALUE: usize = 64 << 10;

/// The value of key `i` of the large backup: its own bytes, so a chunk out of place shows.
fn large_value(i: usize) -> Vec<u8> {
    (0..LARGE_VALUE)
        .map(|j| (j as u32).wrapping_mul(31).wrapping_add(i as u32 * 7) as u8)
        .collect()
}

/// A state larger than one client frame (40 MiB of values) is streamed into the backup
/// file while the cluster goes on taking writes, restored into a new 3-node cluster and
/// read back key by key; the same file truncated or with one byte flipped in the middle of
/// its state is refused with nothing written.
#[test]
fn a_backup_larger_than_a_frame_streams_and_restores() {
    let setup = Setup::new("backup-large", 3);
    let old = (1..=3).map(|id| spawn_node(&setup, id)).collect::<Vec<_>>();
    let client = setup.client("client-alice");
    wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader within 20 s (generous: a shared machine)");
    // Four writers at once, each with its own client.
    std::thread::scope(|s| {
        for w in 0..4 {
            let setup = &setup;
            s.spawn(move || {
                let c = setup.client("client-alice");
                smol::block_on(async {
                    for i in (w..LARGE_KEYS).step_by(4) {
                        c.put(format!("k{i}"), large_value(i)).await.unwrap();
                    }
                });
                c.close();
            });
        }
    });

    // Save, at the leader, with writes going on meanwhile: the node stays responsive. It
    // streams its snapshot file: its peak memory grows by what QUIC holds unacknowledged
    // for the stream (up to the client's 16 MiB stream window), the chunks and snapshot
    // pieces queued (4 + 4 MiB) and the allocator's slack, not by the state: the bound,
    // 40 MiB, is one copy of the state, which a node holding it would add to all of that.
    // (32 MiB was too tight: the build before 2026-12-07 grew by 23-36 MB in 5 runs.)
    let leader_id = leader(&client, &setup.addrs).unwrap();
    let leader_pid = old[leader_id as usize - 1].0.as_ref().unwrap().id();
    let peak_before = proc_memory(leader_pid, "VmHWM").unwrap();
    let file = setup.path().join("large.backup");
    let mut save = admin_command(&setup, &[leader_id])
        .args(["--timeout-ms", "60000", "snapshot", "save"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let began = std::time::Instant::now();
    let mut during = 0;
    smol::block_on(async {
        while save.try_wait().unwrap().is_none() {
            client
                .put(format!("during{during}"), "x")
                .await
                .expect("a write while the backup streams");
            during += 1;
        }
    });
    let saved = save.wait_with_output().unwrap();
    assert!(saved.status.success(), "save: {}", stderr(&saved));
    let said = String::from_utf8_lossy(&saved.stdout);
    assert!(said.contains("of cluster 7"), "{said}");
    let grown = proc_memory(leader_pid, "VmHWM").unwrap() - peak_before;
    assert!(
        grown < 40 << 20,
        "the leader's peak memory grew by {grown} bytes during the backup"
    );
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(
        size > (LARGE_KEYS * LARGE_VALUE) as u64,
        "the backup holds every value: {size} bytes"
    );
    assert!(!setup.path().join("large.backup.tmp").exists());
    eprintln!(
        "backup of {size} bytes saved in {:.1} s; {during} writes served meanwhile; the \
         leader's peak memory grew by {:.1} MiB",
        began.elapsed().as_secs_f64(),
        grown as f64 / f64::from(1 << 20)
    );

    // Damaged copies of it: refused, nothing written.
    let addrs = free_addrs(3);
    let configs = new_configs(&setup, &addrs);
    let bytes = std::fs::read(&file).unwrap();
    let bad = setup.path().join("bad.backup");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    for (what, damaged) in [
        ("truncated", &bytes[..bytes.len() - 1000]),
        ("one byte flipped", &flipped[..]),
    ] {
        std::fs::write(&bad, damaged).unwrap();
        let o = restore(&bad, &configs[0]);
        assert!(!o.status.success(), "{what}");
        assert!(stderr(&o).contains("damaged"), "{what}: {}", stderr(&o));
        assert!(!setup.path().join("data/new-1").exists(), "{what}");
    }
    drop((bytes, flipped));
    std::fs::remove_file(&bad).unwrap();

    for config in &configs {
        let o = restore(&file, config);
        assert!(o.status.success(), "restore: {}", stderr(&o));
    }
    let (_new, new_client) = start_new_cluster(&setup, &configs, &addrs);
    smol::block_on(async {
        for i in 0..LARGE_KEYS {
            let v = new_client
                .get_with(format!("k{i}"), Consistency::Linearizable)
                .await
                .unwrap();
            assert!(v.as_deref() == Some(&large_value(i)[..]), "k{i}");
        }
        new_client.put("after", "restore").await.unwrap();
    });
    client.close();
    new_client.close();
}
