//! Recovery after losing a quorum for good (issue 19), as processes over loopback: five
//! nodes take writes, three are killed for good (`kill -9`, the leader among them), the two
//! survivors cannot commit; the survivor with the longest log is restarted with
//! `coracle node --force-new-cluster` and a new cluster id, serves every acknowledged
//! write, takes new ones, and grows again: a new node is added as a learner, promoted, and
//! holds every key. The refusals: a quorum of the old cluster still answering, the cluster
//! id unchanged, a missing or empty data directory; each leaves the directory unchanged.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::*;
use coracle_quic::client::Client;
use coracle_quic::protocol::{Consistency, NodeStatus};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The configuration of node `id` (its data directory, address and certificate) in
/// cluster `cluster` with `voters` at bootstrap: the old cluster 7's voters; in the new
/// cluster 8 the same for the recovered node (only its cluster id changes: the rest tells
/// the old configuration), the recovered node for a node that joins it.
fn config(setup: &Setup, id: u64, cluster: u64, voters: &str) -> PathBuf {
    let text = setup.config_text(id).replacen(
        "cluster_id = 7\n",
        &format!("cluster_id = {cluster}\nvoters = {voters}\n"),
        1,
    );
    let path = setup.path().join(format!("node-{id}-of-{cluster}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `coracle node --config CONFIG` with `--force-new-cluster` `times` times.
fn spawn_forced(setup: &Setup, id: u64, config: &Path, times: usize) -> Proc {
    spawn_with_args(
        setup,
        id,
        config,
        std::iter::repeat_n("--force-new-cluster", times),
    )
}

/// Runs `--force-new-cluster` on `config`, expecting a refusal: the process exits (within
/// 30 s, generous: the probe waits 5 s for voters that are down) with a failure, and its
/// standard error is returned.
fn refused(setup: &Setup, config: &Path) -> String {
    let err = setup.path().join("refused.err");
    let mut child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(config)
        .arg("--force-new-cluster")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(30), || child.try_wait().unwrap());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&err).unwrap();
    let status = status.unwrap_or_else(|| panic!("not refused: it ran as a node\n{text}"));
    assert!(!status.success(), "{text}");
    text
}

/// Every file under `dir` (one level: a data directory is flat) with its bytes; the lock
/// file aside (a start takes it, and creating it changes no state).
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name() != "LOCK")
                .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn status(client: &Client, addr: SocketAddr) -> Option<NodeStatus> {
    smol::block_on(client.status_of(addr)).ok()
}

fn client_of(setup: &Setup, addrs: Vec<SocketAddr>, timeout: Duration) -> Client {
    Client::new(&setup.creds("client-alice"), addrs)
        .unwrap()
        .with_timeout(timeout)
        .with_attempt_timeout(Duration::from_secs(1))
}

fn admin(setup: &Setup, id: u64, args: &[&str]) -> Result<String, String> {
    let out = admin_command(setup, &[id]).args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits until every node at `addrs` has applied what the leader at `leader` committed.
fn wait_applied(client: &Client, leader: SocketAddr, addrs: &[SocketAddr]) {
    let commit = status(client, leader).unwrap().commit;
    let done = wait_for(Duration::from_secs(30), || {
        addrs
            .iter()
            .all(|&a| status(client, a).is_some_and(|s| s.applied >= commit))
            .then_some(())
    });
    assert!(
        done.is_some(),
        "every node applied index {commit} within 30 s"
    );
}

const KEYS: usize = 40;

#[test]
fn a_survivor_of_a_lost_majority_becomes_a_new_cluster_with_every_acknowledged_write() {
    let setup = Setup::new("recovery", 6);
    let five = &setup.addrs[..5];
    let mut procs: Vec<Proc> = (1..=5)
        .map(|id| spawn_with(&setup, id, &config(&setup, id, 7, "[1, 2, 3, 4, 5]")))
        .collect();
    let client = client_of(&setup, five.to_vec(), Duration::from_secs(20));
    let first = wait_for(Duration::from_secs(20), || leader(&client, five))
        .expect("a leader within 20 s (generous: a shared machine)");
    smol::block_on(async {
        for i in 0..KEYS {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    wait_applied(&client, setup.addrs[first as usize - 1], five);

    // Three nodes, the leader among them, are lost for good.
    let lost: Vec<u64> = std::iter::once(first)
        .chain((1..=5).filter(|&id| id != first).take(2))
        .collect();
    for &id in &lost {
        procs[id as usize - 1].kill();
    }
    let survivors: Vec<u64> = (1..=5).filter(|id| !lost.contains(id)).collect();
    let survivor_addrs: Vec<SocketAddr> = survivors
        .iter()
        .map(|&id| setup.addrs[id as usize - 1])
        .collect();
    let stuck = client_of(&setup, survivor_addrs.clone(), Duration::from_secs(3));
    assert!(
        smol::block_on(stuck.put("stuck", "never")).is_err(),
        "two of five nodes committed a write"
    );
    stuck.close();

    // The survivor with the longest log is recovered; the other one keeps running in the
    // old cluster (it answers the probe: one of five, no quorum).
    let last = |id: u64| {
        status(&client, setup.addrs[id as usize - 1])
            .unwrap()
            .last_index
    };
    let s = *survivors.iter().max_by_key(|&&id| (last(id), id)).unwrap();
    procs[s as usize - 1].kill();
    let s_addr = setup.addrs[s as usize - 1];
    let mut recovered = spawn_forced(&setup, s, &config(&setup, s, 8, "[1, 2, 3, 4, 5]"), 1);
    let new_client = client_of(&setup, vec![s_addr], Duration::from_secs(20));
    let led = wait_for(Duration::from_secs(30), || {
        status(&new_client, s_addr).filter(|st| st.role == "Leader")
    })
    .unwrap_or_else(|| {
        panic!(
            "the recovered node leads its new cluster within 30 s\n{}",
            std::fs::read_to_string(node_log(&setup, s)).unwrap_or_default()
        )
    });
    let voters: Vec<u64> = led
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters, [s], "{led:?}");
    let log = std::fs::read_to_string(node_log(&setup, s)).unwrap();
    assert!(log.contains("WARNING: --force-new-cluster"), "{log}");
    assert!(log.contains("FORCED A NEW CLUSTER"), "{log}");
    // The other survivor, still running in the old cluster, answered the probe.
    let other = *survivors.iter().find(|&&id| id != s).unwrap();
    assert!(
        log.contains(&format!("answered the probe: [{other}]")),
        "{log}"
    );

    // Every acknowledged write is there; new writes commit.
    read_back(&new_client, 0..KEYS);
    smol::block_on(async {
        for i in KEYS..KEYS + 20 {
            new_client
                .put(format!("k{i}"), format!("v{i}"))
                .await
                .unwrap();
        }
    });

    // It grows again: node 6 joins as a learner, is promoted, and holds every key.
    let _six = spawn_with(&setup, 6, &config(&setup, 6, 8, &format!("[{s}]")));
    let six_addr = setup.addrs[5];
    admin(&setup, s, &["add-learner", "6", &six_addr.to_string()]).unwrap();
    let promoted = wait_for(Duration::from_secs(30), || {
        admin(&setup, s, &["promote", "6"]).ok()
    });
    assert!(promoted.is_some(), "node 6 was never promoted");
    let st = status(&new_client, s_addr).unwrap();
    let mut voters: Vec<u64> = st
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    voters.sort_unstable();
    let mut expected = vec![s, 6];
    expected.sort_unstable();
    assert_eq!(voters, expected, "{st:?}");
    let on_six = client_of(&setup, vec![six_addr], Duration::from_secs(20));
    let all = wait_for(Duration::from_secs(20), || {
        let all = smol::block_on(on_six.list("k", 1000, Consistency::Stale)).ok()?;
        (all.len() == KEYS + 20).then_some(all)
    });
    assert!(all.is_some(), "node 6 holds every key");
    // Two voters now: a write commits with both.
    smol::block_on(new_client.put("after", "growth")).unwrap();

    // The old cluster's survivor never sees the new cluster's writes.
    let on_other = client_of(
        &setup,
        vec![setup.addrs[other as usize - 1]],
        Duration::from_secs(5),
    );
    assert_eq!(
        smol::block_on(on_other.get_with("after", Consistency::Stale)).unwrap(),
        None
    );
    on_other.close();

    // Restarted with the flag left on, it is refused (already the new cluster); without
    // it, it rejoins node 6 with every key.
    recovered.kill();
    let again = refused(&setup, &config(&setup, s, 8, "[1, 2, 3, 4, 5]"));
    assert!(again.contains("without --force-new-cluster"), "{again}");
    let _restarted = spawn_with(&setup, s, &config(&setup, s, 8, "[1, 2, 3, 4, 5]"));
    let both = client_of(&setup, vec![s_addr, six_addr], Duration::from_secs(30));
    read_back(&both, 0..KEYS + 20);
    assert_eq!(
        smol::block_on(both.get_with("after", Consistency::Linearizable)).unwrap(),
        Some(b"growth".to_vec())
    );
    both.close();
    on_six.close();
    new_client.close();
    client.close();
}

#[test]
fn a_recovery_is_refused_while_the_old_cluster_answers_and_on_bad_input() {
    let setup = Setup::new("recovery-refused", 3);
    let mut procs: Vec<Proc> = (1..=3)
        .map(|id| spawn_with(&setup, id, &config(&setup, id, 7, "[1, 2, 3]")))
        .collect();
    let client = setup.client("client-alice");
    let first = wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader within 20 s");
    smol::block_on(async {
        for i in 0..5 {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    wait_applied(&client, setup.addrs[first as usize - 1], &setup.addrs);
    let n = (1..=3).find(|&id| id != first).unwrap();
    procs[n as usize - 1].kill();
    let data = setup.path().join(format!("data/node-{n}"));
    let before = contents(&data);
    assert!(!before.is_empty());

    // The two others answer: with this node, a quorum of the old cluster.
    let live = refused(&setup, &config(&setup, n, 8, "[1, 2, 3]"));
    let others: Vec<u64> = (1..=3).filter(|&id| id != n).collect();
    assert!(live.contains("may still have a quorum"), "{live}");
    assert!(live.contains(&format!("{others:?} answered")), "{live}");
    assert!(live.contains("twice"), "{live}");
    assert_eq!(contents(&data), before, "a refusal changed the directory");

    // The cluster id not changed.
    let same = refused(&setup, &config(&setup, n, 7, "[1, 2, 3]"));
    assert!(same.contains("new cluster_id"), "{same}");
    assert_eq!(contents(&data), before);

    // A missing data directory, then an empty one.
    let text = std::fs::read_to_string(config(&setup, n, 8, "[1, 2, 3]"))
        .unwrap()
        .replace(&format!("data/node-{n}"), "data/none");
    let none = setup.path().join("none.toml");
    std::fs::write(&none, text).unwrap();
    let missing = refused(&setup, &none);
    assert!(missing.contains("does not exist"), "{missing}");
    assert!(!setup.path().join("data/none").exists());
    std::fs::create_dir_all(setup.path().join("data/none")).unwrap();
    let empty = refused(&setup, &none);
    assert!(empty.contains("holds no node's state"), "{empty}");
    assert_eq!(contents(&setup.path().join("data/none")), vec![]);

    // Forced twice, it goes on (and says that the old cluster is alive).
    let addr = setup.addrs[n as usize - 1];
    let _forced = spawn_forced(&setup, n, &config(&setup, n, 8, "[1, 2, 3]"), 2);
    let on_n = client_of(&setup, vec![addr], Duration::from_secs(20));
    wait_for(Duration::from_secs(30), || {
        status(&on_n, addr).filter(|st| st.role == "Leader")
    })
    .expect("forced twice, the node leads a new cluster within 30 s");
    let log = std::fs::read_to_string(node_log(&setup, n)).unwrap();
    assert!(log.contains("are still running"), "{log}");
    let v = smol::block_on(on_n.get_with("k4", Consistency::Linearizable)).unwrap();
    assert_eq!(v, Some(b"v4".to_vec()));
    on_n.close();
    client.close();
}
