//! Data directories with real node processes (issue 15, items 4 and 7): a node whose
//! durable state is incomplete or damaged refuses to start and says what is missing, which
//! entries, and how to repair; what recovery drops after a crash is logged with the
//! entries concerned; a node that lost its disk and starts on an empty directory is
//! refused by its peers as the voter it was, the cluster goes on without it, and the
//! documented repair (remove, add as a learner, promote) brings it back as a voter that
//! holds every key.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{admin_command, leader, node_log, spawn_with, wait_for, Proc, Setup, BIN};
use coracle_quic::protocol::{Consistency, NodeStatus};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Small segments, so a node has several; no preallocation, so a segment ends at its
/// records.
const STORAGE: &str = "[storage]\nsegment_bytes = 1024\npreallocate = false\n";

fn config(setup: &Setup, id: u64) -> PathBuf {
    let path = setup.path().join(format!("node-{id}.toml"));
    std::fs::write(&path, setup.config_text(id) + STORAGE).unwrap();
    path
}

fn start(setup: &Setup, id: u64) -> Proc {
    spawn_with(setup, id, &config(setup, id))
}

fn data_dir(setup: &Setup, id: u64) -> PathBuf {
    setup.path().join(format!("data/node-{id}"))
}

fn status(setup: &Setup, client: &coracle_quic::client::Client, id: u64) -> Option<NodeStatus> {
    smol::block_on(client.status_of(setup.addrs[id as usize - 1])).ok()
}

fn log_of(setup: &Setup, id: u64) -> String {
    std::fs::read_to_string(node_log(setup, id)).unwrap_or_default()
}

/// Runs `coracle node` for node `id`, expecting it to refuse to start; its standard error.
fn refused(setup: &Setup, id: u64) -> String {
    let err = setup.path().join(format!("refused-{id}.err"));
    let mut node = Proc(Some(
        Command::new(BIN)
            .args(["node", "--config"])
            .arg(config(setup, id))
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    ));
    // A refusal comes at once; 20 s is a generous bound for a loaded machine.
    let status = node.wait_exit(Duration::from_secs(20));
    let text = std::fs::read_to_string(&err).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "node {id} started: {text}"
    );
    text
}

/// `coracle admin` with the admin certificate against nodes `ids`; its output if it
/// succeeded.
fn admin(setup: &Setup, ids: &[u64], args: &[&str]) -> Result<String, String> {
    let out = admin_command(setup, ids).args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits until node `f` has applied what the leader committed and is connected to every
/// member (so every peer has talked to it, and knows its data directory).
fn wait_settled(setup: &Setup, client: &coracle_quic::client::Client, leader_id: u64, f: u64) {
    let commit = status(setup, client, leader_id).unwrap().commit;
    wait_for(Duration::from_secs(20), || {
        status(setup, client, f)
            .filter(|s| s.applied >= commit && s.members.iter().all(|m| m.connected))
    })
    .expect("the follower applied every write and is connected to every member");
}

/// Puts `k{range}` through `client` (each its own write, so each its own sync); a failure
/// shows the nodes' logs.
fn put_range(setup: &Setup, client: &coracle_quic::client::Client, range: std::ops::Range<usize>) {
    smol::block_on(async {
        for i in range {
            if let Err(e) = client.put(format!("k{i}"), format!("v{i}")).await {
                let logs: Vec<String> = (1..=3)
                    .map(|id| format!("--- node {id}\n{}", log_of(setup, id)))
                    .collect();
                panic!("put k{i}: {e}\n{}", logs.join("\n"));
            }
        }
    });
}

/// Files of `dir` by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect()
}

/// A copy of a directory's files, to put back after damaging them.
struct Saved(Vec<(PathBuf, Vec<u8>)>);

impl Saved {
    fn of(dir: &Path) -> Saved {
        Saved(
            files(dir)
                .into_iter()
                .filter(|p| p.is_file() && !p.ends_with("LOCK"))
                .map(|p| {
                    let b = std::fs::read(&p).unwrap();
                    (p, b)
                })
                .collect(),
        )
    }

    fn restore(&self, dir: &Path) {
        for p in files(dir) {
            if p.is_file() && !p.ends_with("LOCK") {
                std::fs::remove_file(p).unwrap();
            }
        }
        for (p, b) in &self.0 {
            std::fs::write(p, b).unwrap();
        }
    }
}

#[test]
fn damaged_data_directories_are_refused_with_what_is_missing_and_the_repair() {
    let setup = Setup::new("damaged", 3);
    let mut procs: Vec<Proc> = (1..=3).map(|id| start(&setup, id)).collect();
    let client = setup.client("client-alice");
    let first = wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader within 20 s");
    put_range(&setup, &client, 0..60);
    let f = (1..=3).find(|&id| id != first).unwrap();
    let other = (1..=3).find(|&id| id != first && id != f).unwrap();
    let commit = status(&setup, &client, first).unwrap().commit;
    wait_settled(&setup, &client, first, f);
    procs[f as usize - 1].kill();
    let dir = data_dir(&setup, f);
    let saved = Saved::of(&dir);
    let addr = setup.addrs[f as usize - 1].to_string();
    let repair = |text: &str| {
        assert!(
            text.contains(&format!("ID is {f}"))
                && text.contains(&format!("ADDR is {addr}"))
                && text.contains("coracle admin add-learner ID ADDR")
                && text.contains("Replacing a node that lost its disk"),
            "no repair in: {text}"
        );
    };

    // The hard state deleted: the log holds entries of a term the node no longer knows.
    std::fs::remove_file(dir.join("hard_state")).unwrap();
    let text = refused(&setup, f);
    assert!(
        text.contains("hard state") && text.contains("vote twice"),
        "{text}"
    );
    repair(&text);
    saved.restore(&dir);

    // Every segment deleted.
    for s in segments(&dir) {
        std::fs::remove_file(s).unwrap();
    }
    let text = refused(&setup, f);
    assert!(text.contains("every log segment is missing"), "{text}");
    repair(&text);
    saved.restore(&dir);

    // The last segment deleted: the one before it is sealed.
    let segs = segments(&dir);
    assert!(segs.len() >= 3, "{segs:?}");
    std::fs::remove_file(segs.last().unwrap()).unwrap();
    let text = refused(&setup, f);
    assert!(
        text.contains("sealed") && text.contains("missing"),
        "{text}"
    );
    saved.restore(&dir);

    // The last segment cut short in the middle of its durable records (the report: "cut
    // ... bytes: 51" while hundreds of acknowledged entries were gone).
    let last = segments(&dir).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..120]).unwrap();
    let text = refused(&setup, f);
    assert!(
        text.contains("are lost") && text.contains("acknowledged") && text.contains(" entries"),
        "{text}"
    );
    // "entries A..=B (N entries": the range and how many.
    let at = text.find("..=").unwrap();
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    };
    let a: u64 = digits(&text[..at].chars().rev().collect::<String>())
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap();
    let b: u64 = digits(&text[at + 3..]).parse().unwrap();
    assert!(
        b >= a && text.contains(&format!("({} entries", b - a + 1)),
        "{text}"
    );
    repair(&text);
    saved.restore(&dir);

    // Another node's data directory.
    let swapped = Saved::of(&data_dir(&setup, other));
    saved.restore(&dir);
    for (p, b) in &swapped.0 {
        std::fs::write(dir.join(p.file_name().unwrap()), b).unwrap();
    }
    for s in segments(&dir) {
        if !swapped
            .0
            .iter()
            .any(|(p, _)| p.file_name() == s.file_name())
        {
            std::fs::remove_file(s).unwrap();
        }
    }
    let text = refused(&setup, f);
    assert!(
        text.contains(&format!("belongs to node {other} of cluster 7"))
            && text.contains("data_dir"),
        "{text}"
    );
    saved.restore(&dir);

    // What a crash leaves is repaired, and logged with the entries it concerns: a torn
    // write at the end of the last segment, a half-written hard state.
    let last = segments(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0x2a; 51]);
    std::fs::write(&last, &bytes).unwrap();
    std::fs::write(dir.join("hard_state.tmp"), b"CORAHARD").unwrap();
    procs[f as usize - 1] = start(&setup, f);
    wait_for(Duration::from_secs(20), || {
        status(&setup, &client, f).filter(|s| s.applied >= commit)
    })
    .expect("the repaired follower starts and catches up");
    let log = log_of(&setup, f);
    assert!(
        log.contains("cut a torn tail off")
            && log.contains("51 bytes")
            && log.contains("never acknowledged"),
        "{log}"
    );
    assert!(
        log.contains("removed leftover temporary file") && log.contains("hard_state.tmp"),
        "{log}"
    );
    put_range(&setup, &client, 60..70);
    smol::block_on(async {
        let c = coracle_quic::client::Client::new(
            &setup.creds("client-alice"),
            vec![setup.addrs[f as usize - 1]],
        )
        .unwrap();
        let all = wait_for(Duration::from_secs(20), || {
            let all = smol::block_on(c.list("k", 1000, Consistency::Stale)).ok()?;
            (all.len() == 70).then_some(all)
        });
        assert!(all.is_some(), "node {f} holds every key");
        c.close();
    });
    client.close();
}

#[test]
fn a_node_that_lost_its_disk_is_refused_until_it_rejoins_as_a_new_member() {
    let setup = Setup::new("lost-disk", 3);
    let mut procs: Vec<Proc> = (1..=3).map(|id| start(&setup, id)).collect();
    let client = setup.client("client-alice");
    let leader_id = wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader within 20 s");
    put_range(&setup, &client, 0..20);
    let f = (1..=3).find(|&id| id != leader_id).unwrap();
    let other = (1..=3).find(|&id| id != leader_id && id != f).unwrap();
    wait_settled(&setup, &client, leader_id, f);

    // Its disk is lost: the node starts again on an empty data directory.
    procs[f as usize - 1].kill();
    std::fs::remove_dir_all(data_dir(&setup, f)).unwrap();
    procs[f as usize - 1] = start(&setup, f);

    // Both of its peers refuse it, and both ends say why and what to do.
    let refusing = format!("refusing node {f}");
    let said = wait_for(Duration::from_secs(30), || {
        let peers_say = [leader_id, other]
            .iter()
            .all(|&id| log_of(&setup, id).contains(&refusing));
        let it_says = log_of(&setup, f).contains("refuses this node");
        (peers_say && it_says).then_some(())
    });
    assert!(
        said.is_some(),
        "leader: {}\nnode {f}: {}",
        log_of(&setup, leader_id),
        log_of(&setup, f)
    );
    let leader_log = log_of(&setup, leader_id);
    assert!(
        leader_log.contains(&format!("coracle admin remove {f}"))
            && leader_log.contains(&format!("coracle admin add-learner {f} ADDR")),
        "{leader_log}"
    );

    // The cluster goes on with the other two; the new node has nothing, and no vote. (The
    // client is given the two: the new node answers "no leader known; retry", and moving
    // on from such an answer is the client's business, issue 15 item 3.)
    client.close();
    let client = coracle_quic::client::Client::new(
        &setup.creds("client-alice"),
        vec![
            setup.addrs[leader_id as usize - 1],
            setup.addrs[other as usize - 1],
        ],
    )
    .unwrap()
    .with_timeout(Duration::from_secs(20));
    put_range(&setup, &client, 20..30);
    // (The connection of its previous life ends when it times out.)
    let s = wait_for(Duration::from_secs(20), || {
        status(&setup, &client, leader_id)
            .filter(|s| s.members.iter().any(|m| m.id == f && !m.connected))
    })
    .expect("the refused node is shown not connected");
    assert_eq!(s.leader, Some(leader_id));
    assert!(s.members.iter().any(|m| m.id == f && m.voter), "{s:?}");
    let lost = status(&setup, &client, f).unwrap();
    assert_eq!((lost.commit, lost.applied, lost.last_index), (0, 0, 0));
    assert_ne!(lost.role, "Leader");

    // The repair: remove it, add it back as a learner, promote it once it has caught up
    // (asked of the two nodes that have a leader).
    let healthy = [leader_id, other];
    admin(&setup, &healthy, &["remove", &f.to_string()]).unwrap();
    let addr = setup.addrs[f as usize - 1].to_string();
    admin(&setup, &healthy, &["add-learner", &f.to_string(), &addr]).unwrap();
    let promoted = wait_for(Duration::from_secs(30), || {
        admin(&setup, &healthy, &["promote", &f.to_string()]).ok()
    });
    assert!(promoted.is_some(), "node {f} was never promoted");
    let s = status(&setup, &client, leader_id).unwrap();
    let member = s.members.iter().find(|m| m.id == f).unwrap();
    assert!(member.voter, "{s:?}");

    // A voter again, with every key: the cluster commits with it when another node stops.
    let stale_reader = coracle_quic::client::Client::new(
        &setup.creds("client-alice"),
        vec![setup.addrs[f as usize - 1]],
    )
    .unwrap();
    let all = wait_for(Duration::from_secs(20), || {
        let all = smol::block_on(stale_reader.list("k", 1000, Consistency::Stale)).ok()?;
        (all.len() == 30).then_some(all)
    });
    assert!(all.is_some(), "node {f} holds every key");
    procs[other as usize - 1].kill();
    put_range(&setup, &client, 30..35);
    smol::block_on(async {
        for i in 0..35 {
            let v = client.get(format!("k{i}")).await.unwrap();
            assert_eq!(v, Some(format!("v{i}").into_bytes()), "k{i}");
        }
    });
    stale_reader.close();
    client.close();
}
