//! Joining and leaving as real processes on 127.0.0.1 (issue 19): a 4th node started with
//! `--join` is added as a learner and promoted by itself once caught up, with every key; a
//! restart does not join twice; a node (the leader) leaves and the configuration shrinks;
//! two members change at once through joint consensus; election priorities from node.toml
//! and at run time decide the leader. Bad input: a node of another CA, unreachable
//! addresses, garbage flags and values, all refused with a clear error and nothing changed.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{
    admin_command, leader, node_log, spawn_with, spawn_with_args, wait_for, Proc, Setup, BIN,
};
use coracle_quic::client::Client;
use coracle_quic::protocol::{Consistency, NodeStatus};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Liveness bound of every wait below: generous, the machine is shared (not a timing
/// assertion).
const LIMIT: Duration = Duration::from_secs(40);

/// Writes node `id`'s configuration: the cluster starts with voters 1, 2 and 3; `extra` is
/// appended as top-level keys.
fn config(setup: &Setup, id: u64, extra: &str) -> PathBuf {
    let path = setup.path().join(format!("node-{id}.toml"));
    let text = format!("voters = [1, 2, 3]\n{extra}\n{}", setup.config_text(id));
    std::fs::write(&path, text).unwrap();
    path
}

/// Node `id`'s configuration as a new node has it: no `voters`, no `[[peers]]` (it knows
/// the cluster only by the addresses given to `--join`); `listen` replaced by `listen`.
fn joiner_config(setup: &Setup, id: u64, listen: SocketAddr) -> PathBuf {
    let text = setup.config_text(id);
    let mut kept = String::new();
    let mut in_peers = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_peers = line == "[[peers]]";
        }
        if !in_peers {
            kept += line;
            kept.push('\n');
        }
    }
    let kept = kept.replace(
        &format!("listen = \"{}\"", setup.addrs[id as usize - 1]),
        &format!("listen = \"{listen}\""),
    );
    let path = setup.path().join(format!("joiner-{id}.toml"));
    std::fs::write(&path, kept).unwrap();
    path
}

fn join_args(addrs: &[SocketAddr]) -> Vec<String> {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    vec!["--join".into(), list.join(",")]
}

fn status(client: &Client, setup: &Setup, id: u64) -> Option<NodeStatus> {
    smol::block_on(client.status_of(setup.addrs[id as usize - 1])).ok()
}

fn voters(s: &NodeStatus) -> Vec<u64> {
    let mut v: Vec<u64> = s.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    v.sort_unstable();
    v
}

fn learners(s: &NodeStatus) -> Vec<u64> {
    let mut v: Vec<u64> = s
        .members
        .iter()
        .filter(|m| !m.voter)
        .map(|m| m.id)
        .collect();
    v.sort_unstable();
    v
}

/// The leader among `ids`, once one says it leads, and its status.
fn leader_status(client: &Client, setup: &Setup, ids: &[u64]) -> NodeStatus {
    wait_for(LIMIT, || {
        ids.iter()
            .filter_map(|&id| status(client, setup, id))
            .find(|s| s.role == "Leader")
    })
    .expect("a leader")
}

/// Waits until the leader among `ids` reports voters `want` and no learner.
fn wait_voters(client: &Client, setup: &Setup, ids: &[u64], want: &[u64]) -> NodeStatus {
    wait_for(LIMIT, || {
        let s = leader_status(client, setup, ids);
        (voters(&s) == want && learners(&s).is_empty()).then_some(s)
    })
    .unwrap_or_else(|| panic!("voters never became {want:?}"))
}

fn run(mut command: Command) -> (bool, String) {
    let out = command.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn keys_on(setup: &Setup, id: u64) -> usize {
    let c = Client::new(
        &setup.creds("client-alice"),
        vec![setup.addrs[id as usize - 1]],
    )
    .unwrap();
    let n = smol::block_on(c.list("k", 1000, Consistency::Stale))
        .map(|l| l.len())
        .unwrap_or(0);
    c.close();
    n
}

#[test]
fn a_node_joins_by_itself_one_leaves_and_two_change_at_once() {
    let setup = Setup::new("join", 5);
    let mut procs: Vec<Proc> = (1..=3)
        .map(|id| spawn_with(&setup, id, &config(&setup, id, "")))
        .collect();
    let client = setup.client("client-alice");
    wait_for(LIMIT, || leader(&client, &setup.addrs[..3])).expect("a leader");
    smol::block_on(async {
        for i in 0..50 {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });

    // 1. Node 4 joins through node 1 (whichever leads: a follower names the leader) and is
    //    made a voter by itself once caught up.
    let four = joiner_config(&setup, 4, setup.addrs[3]);
    assert!(!std::fs::read_to_string(&four).unwrap().contains("peers"));
    procs.push(spawn_with_args(
        &setup,
        4,
        &four,
        join_args(&setup.addrs[..1]),
    ));
    let s = wait_voters(&client, &setup, &[1, 2, 3, 4], &[1, 2, 3, 4]);
    let logged = wait_for(LIMIT, || {
        let log4 = std::fs::read_to_string(node_log(&setup, 4)).unwrap();
        (log4.contains("added to the cluster as a learner") && log4.contains("Promote"))
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "joined as a learner, then asked to be promoted"
    );
    let caught_up = wait_for(LIMIT, || (keys_on(&setup, 4) == 50).then_some(()));
    assert!(caught_up.is_some(), "node 4 has every key");
    assert_eq!(s.members.len(), 4);

    // 2. A restart (kill -9) of the joined node does not join again: same configuration.
    procs[3].kill();
    procs[3] = spawn_with_args(&setup, 4, &four, join_args(&setup.addrs[..1]));
    let again = wait_for(LIMIT, || {
        let log = std::fs::read_to_string(node_log(&setup, 4)).unwrap();
        log.contains("not joining again").then_some(())
    });
    assert!(again.is_some(), "a restarted member does not join twice");
    wait_voters(&client, &setup, &[1, 2, 3, 4], &[1, 2, 3, 4]);

    // 3. The leader leaves on purpose: it hands leadership over, is removed, and stops.
    let first = leader_status(&client, &setup, &[1, 2, 3, 4]).id;
    let mut leave = admin_command(&setup, &[first]);
    leave.args(["--timeout-ms", "30000", "leave"]);
    let (ok, text) = run(leave);
    assert!(ok, "leave: {text}");
    assert!(text.contains("left the cluster"), "{text}");
    let exited = procs[first as usize - 1].wait_exit(LIMIT);
    assert!(
        exited.is_some_and(|s| s.success()),
        "the node that left stops"
    );
    let rest: Vec<u64> = (1..=4).filter(|&id| id != first).collect();
    let s = wait_voters(&client, &setup, &rest, &rest);
    assert!(s.members.iter().all(|m| m.id != first));

    // 4. Two members at once (joint consensus): node 5 (started knowing the cluster, not a
    //    member) is added and another member removed.
    procs.push(spawn_with(&setup, 5, &config(&setup, 5, "")));
    let removed = *rest.iter().find(|&&id| id != s.id).unwrap();
    let mut change = admin_command(&setup, &rest);
    change.args([
        "--timeout-ms",
        "30000",
        "change",
        "--add",
        &format!("5={}", setup.addrs[4]),
        "--remove",
        &removed.to_string(),
    ]);
    let (ok, text) = run(change);
    assert!(ok, "change: {text}");
    let mut want: Vec<u64> = rest.iter().copied().filter(|&id| id != removed).collect();
    want.push(5);
    want.sort_unstable();
    let mut all = rest.clone();
    all.push(5);
    wait_voters(&client, &setup, &all, &want);
    let joint = all.iter().any(|&id| {
        let log = std::fs::read_to_string(node_log(&setup, id)).unwrap();
        log.lines()
            .any(|l| l.contains("membership change proposed") && l.contains("Joint"))
    });
    assert!(joint, "a joint configuration was used");
    let caught_up = wait_for(LIMIT, || (keys_on(&setup, 5) == 50).then_some(()));
    assert!(caught_up.is_some(), "node 5 has every key");
    client.close();
}

#[test]
fn the_highest_priority_caught_up_node_leads_and_a_run_time_change_moves_it() {
    let setup = Setup::new("priority", 3);
    let mut procs: Vec<Proc> = (1..=3)
        .map(|id| {
            let extra = if id == 3 { "priority = 5" } else { "" };
            spawn_with(&setup, id, &config(&setup, id, extra))
        })
        .collect();
    let client = setup.client("client-alice");
    let three = wait_for(LIMIT, || {
        smol::block_on(client.put("k", "v")).ok()?;
        (leader(&client, &setup.addrs) == Some(3)).then_some(())
    });
    assert!(three.is_some(), "node 3 (priority 5 in node.toml) leads");

    // At run time: node 1 above everyone, on every node.
    let mut raise = admin_command(&setup, &[1, 2, 3]);
    raise.args(["priority", "1", "9"]);
    let (ok, text) = run(raise);
    assert!(ok, "priority: {text}");
    let one = wait_for(LIMIT, || {
        smol::block_on(client.put("k", "w")).ok()?;
        (leader(&client, &setup.addrs) == Some(1)).then_some(())
    });
    assert!(one.is_some(), "leadership moved to node 1");
    // Every node applies the record (a follower may do so a moment after the leader).
    for id in 1..=3 {
        let applied = wait_for(LIMIT, || {
            let log = std::fs::read_to_string(node_log(&setup, id)).unwrap();
            log.lines()
                .any(|l| l.contains("election priority set") && l.contains("priority=9"))
                .then_some(())
        });
        assert!(applied.is_some(), "node {id} applied the priority");
    }
    procs.clear();
    client.close();
}

#[test]
fn bad_joins_and_garbage_are_refused_clearly_and_change_nothing() {
    let setup = Setup::new("badjoin", 3);
    let _procs: Vec<Proc> = (1..=3)
        .map(|id| spawn_with(&setup, id, &config(&setup, id, "")))
        .collect();
    let client = setup.client("client-alice");
    wait_for(LIMIT, || leader(&client, &setup.addrs)).expect("a leader");

    // A node whose certificate comes from another CA: refused at the handshake.
    let other = Setup::new("otherca", 4);
    let text = format!("voters = [1, 2, 3]\n{}", other.config_text(4));
    let path = other.path().join("node-4.toml");
    std::fs::write(&path, text).unwrap();
    let mut join = Command::new(BIN);
    join.args(["node", "--config"])
        .arg(&path)
        .args(join_args(&setup.addrs))
        .args(["--join-timeout-ms", "5000"]);
    let (ok, text) = run(join);
    assert!(!ok, "a node of another CA joined: {text}");
    assert!(
        text.contains("cannot join") && text.contains("certificate") && text.contains("CA"),
        "{text}"
    );

    // Nobody at the addresses: a clear error once the join timeout passes.
    let nobody = common::free_addrs(2);
    // A node of this cluster's CA.
    let four = Setup::new("nobody", 4);
    let text4 = format!("voters = [1, 2, 3]\n{}", four.config_text(4));
    let path4 = four.path().join("node-4.toml");
    std::fs::write(&path4, text4).unwrap();
    let mut join = Command::new(BIN);
    join.args(["node", "--config"])
        .arg(&path4)
        .args(join_args(&nobody))
        .args(["--join-timeout-ms", "2000"]);
    let (ok, text) = run(join);
    assert!(!ok);
    // Every address was tried, and is named.
    assert!(
        text.contains("no member of the cluster could be reached")
            && nobody.iter().all(|a| text.contains(&a.to_string())),
        "{text}"
    );

    // A node listening on every address, with no [[peers]] entry of its own: the others
    // could not dial it. Refused before it asks anyone.
    let anywhere = SocketAddr::from(([0, 0, 0, 0], common::free_addrs(1)[0].port()));
    let mut join = Command::new(BIN);
    join.args(["node", "--config"])
        .arg(joiner_config(&four, 4, anywhere))
        .args(join_args(&setup.addrs));
    let (ok, text) = run(join);
    assert!(!ok);
    assert!(
        text.contains("cannot dial") && text.contains("[[peers]]"),
        "{text}"
    );

    // Nothing changed: three voters, no one else.
    let s = leader_status(&client, &setup, &[1, 2, 3]);
    assert_eq!(voters(&s), [1, 2, 3]);
    assert_eq!(s.members.len(), 3);

    // Garbage flags and values: refused before anything runs.
    for (args, expected) in [
        (
            &["node", "--config", "x.toml", "--join", "nowhere"][..],
            "not an ip:port",
        ),
        (
            &["node", "--config", "x.toml", "--join", "0.0.0.0:7001"][..],
            "names no host",
        ),
        (
            &["node", "--config", "x.toml", "--join-timeout-ms", "5"][..],
            "--join",
        ),
        (
            &[
                "node",
                "--config",
                "x.toml",
                "--join",
                "127.0.0.1:1",
                "--join-timeout-ms",
                "0",
            ][..],
            "0",
        ),
        (&["admin", "priority", "1", "256"][..], "256"),
        (&["admin", "priority", "0", "1"][..], "start at 1"),
        (&["admin", "change", "--add", "4"][..], "ID=ADDR"),
        (&["admin", "change", "--remove", "x"][..], "not a node id"),
    ] {
        let (ok, text) = run({
            let mut c = Command::new(BIN);
            c.args(args).current_dir(setup.path());
            c
        });
        assert!(!ok, "{args:?} was accepted");
        assert!(text.contains(expected), "{args:?}: {text}");
    }
    let mut nothing = admin_command(&setup, &[1]);
    nothing.arg("change");
    let (ok, text) = run(nothing);
    assert!(!ok && text.contains("nothing to change"), "{text}");
    // A priority for a node that is no member, a joint change that adds and removes the
    // same node: refused by the cluster.
    for (args, expected) in [
        (&["priority", "9", "1"][..], "not a member"),
        (
            &["change", "--add", "2=127.0.0.1:7002", "--remove", "2"][..],
            "both added and removed",
        ),
    ] {
        let mut c = admin_command(&setup, &[1, 2, 3]);
        c.args(args);
        let (ok, text) = run(c);
        assert!(!ok && text.contains(expected), "{args:?}: {text}");
    }
    let s = leader_status(&client, &setup, &[1, 2, 3]);
    assert_eq!(voters(&s), [1, 2, 3]);
    // Leave needs the one node that leaves.
    let mut leave = admin_command(&setup, &[1, 2]);
    leave.arg("leave");
    let (ok, text) = run(leave);
    assert!(!ok && text.contains("alone"), "{text}");
    client.close();
}

/// The library: `Handle::join` is safe to retry (a member at that address is "done"), and a
/// node id that is a member at another address is refused with a clear error, nothing
/// changed.
#[test]
fn a_join_retried_is_done_once_and_a_member_elsewhere_is_refused() {
    use coracle_quic::config::NodeConfig;
    use coracle_quic::host::JoinError;
    use coracle_quic::server::RunningNode;
    let setup = Setup::new("join-lib", 4);
    let cfg = |text: String| {
        NodeConfig::parse(&format!("voters = [1, 2, 3]\n{text}"), setup.path()).unwrap()
    };
    let nodes: Vec<RunningNode> = (1..=3)
        .map(|id| RunningNode::start(&cfg(setup.config_text(id))).unwrap())
        .collect();
    let client = setup.client("client-alice");
    wait_for(LIMIT, || leader(&client, &setup.addrs[..3])).expect("a leader");

    let mut four = cfg(setup.config_text(4));
    four.join = setup.addrs[..3].to_vec();
    let joined = RunningNode::start(&four).unwrap();
    let handle = joined.handle().with_timeout(LIMIT);
    let by = smol::block_on(handle.join(&four.join)).unwrap();
    assert!((1..=3).contains(&by), "added by the leader, node {by}");
    let again = smol::block_on(handle.join(&four.join)).unwrap();
    assert!((1..=4).contains(&again));
    let s = leader_status(&client, &setup, &[1, 2, 3]);
    assert_eq!(s.members.iter().filter(|m| m.id == 4).count(), 1);
    joined.shutdown().unwrap();

    // Node 4 again, with a new data directory and another address: refused (the members
    // know node 4 with its first data directory; remove it first to replace it).
    let elsewhere = common::free_addrs(1)[0];
    let text = setup
        .config_text(4)
        .replace(&setup.addrs[3].to_string(), &elsewhere.to_string())
        .replace("data/node-4", "data/node-4-moved");
    let mut moved = cfg(text);
    moved.join = setup.addrs[..3].to_vec();
    let node = RunningNode::start(&moved).unwrap();
    let refused = smol::block_on(node.handle().with_timeout(LIMIT).join(&moved.join));
    match refused {
        Err(JoinError::Refused(m)) => {
            assert!(m.contains("another data directory"), "{m}")
        }
        other => panic!("not refused: {other:?}"),
    }
    node.shutdown().unwrap();
    let s = leader_status(&client, &setup, &[1, 2, 3]);
    let four = s.members.iter().find(|m| m.id == 4).unwrap();
    assert_eq!(
        four.addr.as_deref(),
        Some(setup.addrs[3].to_string().as_str())
    );
    client.close();
    for n in nodes {
        n.shutdown().unwrap();
    }
}
