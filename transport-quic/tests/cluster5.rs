//! Larger clusters and membership changes on loopback:
//!
//! - five `coracle node` processes elect a leader, commit writes, survive `kill -9` of the
//!   leader with every acknowledged write kept, and the killed node catches up after a
//!   restart from its data directory;
//! - against a running 3-node cluster, through the admin client: a new node is added as a
//!   learner (it joins from a snapshot: the log is compacted already), promoted to voter,
//!   another member is removed, and leadership is transferred to the new node;
//! - the members stop dialing a node once it is removed.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{leader, spawn_node, wait_for, writes_survive_a_leader_kill, Proc, Setup};
use coracle_quic::client::Client;
use coracle_quic::config::NodeConfig;
use coracle_quic::protocol::{AdminOp, Consistency, NodeStatus};
use coracle_quic::server::RunningNode;
use coracle_quic::transport::TransportStats;
use std::collections::BTreeMap;
use std::time::Duration;

fn status(client: &Client, setup: &Setup, id: u64) -> Option<NodeStatus> {
    smol::block_on(client.status_of(setup.addrs[id as usize - 1])).ok()
}

/// Waits until every node in `ids` has applied the commit index of `leader_id`.
fn wait_caught_up(setup: &Setup, client: &Client, leader_id: u64, ids: &[u64]) {
    let done = wait_for(Duration::from_secs(30), || {
        let commit = status(client, setup, leader_id)?.commit;
        ids.iter()
            .all(|&id| status(client, setup, id).is_some_and(|s| s.applied >= commit))
            .then_some(())
    });
    assert!(done.is_some(), "nodes {ids:?} did not catch up");
}

#[test]
fn five_processes_elect_commit_survive_a_leader_kill_and_restart() {
    let setup = Setup::new("c5", 5);
    let mut procs: Vec<Proc> = (1..=5).map(|id| spawn_node(&setup, id)).collect();
    let client = setup.client("client-alice");
    let (first, second) = writes_survive_a_leader_kill(&setup, &mut procs, &client, 30);

    // The killed node restarts from its data directory and catches up; all five agree.
    procs[first as usize - 1] = spawn_node(&setup, first);
    wait_caught_up(&setup, &client, second, &[1, 2, 3, 4, 5]);
    let restarted = status(&client, &setup, first).unwrap();
    assert_eq!(restarted.leader, Some(second));
    assert_eq!(restarted.members.iter().filter(|m| m.voter).count(), 5);
    for id in 1..=5 {
        let c = Client::new(
            &setup.creds("client-alice"),
            vec![setup.addrs[id as usize - 1]],
        )
        .unwrap();
        let all = smol::block_on(c.list("k", 1000, Consistency::Stale)).unwrap();
        assert_eq!(all.len(), 60, "node {id}");
        c.close();
    }
    client.close();
}

/// Node `id` of a cluster that starts with voters 1, 2 and 3 (node 4 joins later);
/// snapshots every 30 entries so the new node joins from a snapshot.
fn member_config(setup: &Setup, id: u64) -> NodeConfig {
    let text = format!("voters = [1, 2, 3]\n{}", setup.config_text(id))
        + "[storage]\nsnapshot_entries = 30\nsnapshot_keep_entries = 5\n";
    NodeConfig::parse(&text, setup.path()).unwrap()
}

/// Starts node `id`; retried while its address is still held by the endpoint of its
/// previous run, which closes in the background (up to 30 s: a liveness limit for a
/// loaded machine, where 10 s once ran out). A failure names the last error.
fn start_member(setup: &Setup, id: u64) -> RunningNode {
    let mut last = String::new();
    wait_for(Duration::from_secs(30), || {
        RunningNode::start(&member_config(setup, id))
            .map_err(|e| last = e.to_string())
            .ok()
    })
    .unwrap_or_else(|| panic!("node {id} did not restart within 30 s: {last}"))
}

fn voters(s: &NodeStatus) -> Vec<u64> {
    let mut v: Vec<u64> = s.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    v.sort_unstable();
    v
}

#[test]
fn membership_changes_through_the_admin_client_on_a_running_cluster() {
    let setup = Setup::new("members", 4);
    let mut nodes: BTreeMap<u64, RunningNode> = (1..=3)
        .map(|id| (id, RunningNode::start(&member_config(&setup, id)).unwrap()))
        .collect();
    let client = setup.client("client-alice");
    let admin = setup.client("admin-ops");
    let first = wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader within 20 s");
    let mut model = BTreeMap::new();
    smol::block_on(async {
        for i in 0..80 {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
            model.insert(format!("k{i}"), format!("v{i}"));
        }
    });

    // A plain client may not change the membership.
    let refused = smol::block_on(client.admin(AdminOp::Promote { id: 4 }));
    assert!(refused.is_err());

    // 1. Node 4 starts (knowing voters 1-3) and is added as a learner; the log it needs is
    //    compacted away, so it gets the snapshot, then the log.
    nodes.insert(4, RunningNode::start(&member_config(&setup, 4)).unwrap());
    smol::block_on(admin.admin(AdminOp::AddLearner {
        id: 4,
        addr: setup.addrs[3].to_string(),
    }))
    .unwrap();
    wait_caught_up(&setup, &client, first, &[4]);
    let s4 = status(&client, &setup, 4).unwrap();
    assert!(
        s4.members.iter().any(|m| m.id == 4 && !m.voter),
        "a learner"
    );
    assert_eq!(s4.keys, 80);

    // 2. Promoted to voter.
    smol::block_on(admin.admin(AdminOp::Promote { id: 4 })).unwrap();
    let four = wait_for(Duration::from_secs(20), || {
        let s = status(&client, &setup, first)?;
        (voters(&s) == [1, 2, 3, 4]).then_some(())
    });
    assert!(four.is_some(), "node 4 did not become a voter");

    // 3. Another follower is removed.
    let removed = (1..=3).find(|&id| id != first).unwrap();
    // Admin orders are at least once: an attempt that timed out on a loaded machine may
    // have removed the node already, and its retry then finds no such member. Whether it
    // is gone is checked just below either way.
    if let Err(e) = smol::block_on(admin.admin(AdminOp::Remove { id: removed })) {
        assert!(e.to_string().contains("no such member"), "remove: {e}");
    }
    let expected: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|&id| id != removed)
        .collect();
    let gone = wait_for(Duration::from_secs(20), || {
        let s = status(&client, &setup, first)?;
        (voters(&s) == expected && s.members.iter().all(|m| m.id != removed)).then_some(())
    });
    assert!(gone.is_some(), "node {removed} was not removed");
    nodes.remove(&removed).unwrap().shutdown().unwrap();

    // 4. Leadership goes to the new node.
    let moved = wait_for(Duration::from_secs(20), || {
        if status(&client, &setup, 4).is_some_and(|s| s.role == "Leader") {
            return Some(());
        }
        let _ = smol::block_on(admin.admin(AdminOp::Transfer { id: 4 }));
        None
    });
    assert!(moved.is_some(), "leadership did not move to node 4");

    // The cluster goes on under its new membership, and the members agree.
    smol::block_on(async {
        for i in 80..100 {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
            model.insert(format!("k{i}"), format!("v{i}"));
        }
        for (k, v) in &model {
            let got = client.get(k.clone()).await.unwrap();
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "{k}");
        }
    });
    wait_caught_up(&setup, &client, 4, &expected);
    for &id in &expected {
        let s = status(&client, &setup, id).unwrap();
        assert_eq!(s.leader, Some(4), "node {id}");
        assert_eq!(s.keys, 100, "node {id}");
    }

    // 5. More writes: every member snapshots past the membership changes and compacts
    //    them away; after a cold restart the configuration comes from the snapshots (the
    //    node.toml files still name voters 1, 2, 3).
    smol::block_on(async {
        for i in 100..140 {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    wait_caught_up(&setup, &client, 4, &expected);
    client.close();
    admin.close();
    for (_, n) in std::mem::take(&mut nodes) {
        n.shutdown().unwrap();
    }
    for &id in &expected {
        let log = coracle_quic::storage::FileLog::open(member_config(&setup, id).data_dir).unwrap();
        let meta = log.snapshot().expect("a snapshot").meta;
        assert!(
            !meta.config().is_empty(),
            "node {id}: the snapshot carries the configuration"
        );
        assert!(log.first_index() > meta.index.min(100));
    }
    for &id in &expected {
        nodes.insert(id, start_member(&setup, id));
    }
    let client = setup.client("client-alice");
    let l = wait_for(Duration::from_secs(20), || leader(&client, &setup.addrs))
        .expect("a leader after the restart");
    let s = status(&client, &setup, l).unwrap();
    assert_eq!(
        voters(&s),
        expected,
        "the membership survived compaction and restart"
    );
    smol::block_on(async {
        client.put("after", "restart").await.unwrap();
        let all = client
            .list("k", 1000, Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(all.len(), 140);
    });
    client.close();
    for (_, n) in nodes {
        n.shutdown().unwrap();
    }
}

/// A node removed from the configuration is no longer called: while it is a member and
/// down its peers dial it on their backoff; once it is removed they drop the link and
/// stop; added back, it is dialed again.
#[test]
fn members_stop_dialing_a_removed_node() {
    let setup = Setup::new("removed-links", 3);
    let mut nodes: BTreeMap<u64, RunningNode> = (1..=3)
        .map(|id| (id, RunningNode::start(&setup.config(id)).unwrap()))
        .collect();
    let client = setup.client("client-alice");
    let admin = setup.client("admin-ops");
    smol::block_on(client.put("before", "1")).unwrap();
    let first = leader(&client, &setup.addrs).unwrap();
    // The highest id that does not lead: the nodes below it are the ones that dial it.
    let removed = (1..=3).rev().find(|&id| id != first).unwrap();
    nodes.remove(&removed).unwrap().shutdown().unwrap();
    let dials = |nodes: &BTreeMap<u64, RunningNode>| -> u64 {
        nodes
            .values()
            .map(|n| TransportStats::get(&n.stats().dials))
            .sum()
    };
    let before = dials(&nodes);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        dials(&nodes) > before,
        "a member that is down is dialed (reconnect_max_ms = 300)"
    );
    // Admin orders are at least once (see above).
    if let Err(e) = smol::block_on(admin.admin(AdminOp::Remove { id: removed })) {
        assert!(e.to_string().contains("no such member"), "remove: {e}");
    }
    let gone = wait_for(Duration::from_secs(20), || {
        nodes
            .keys()
            .all(|&id| {
                status(&client, &setup, id)
                    .is_some_and(|s| s.members.iter().all(|m| m.id != removed))
            })
            .then_some(())
    });
    assert!(gone.is_some(), "node {removed} was not removed everywhere");
    // A dial under way when the removal was applied may still end; then none.
    std::thread::sleep(Duration::from_millis(500));
    let after = dials(&nodes);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(dials(&nodes), after, "node {removed} is still dialed");
    // The two go on.
    smol::block_on(client.put("after", "2")).unwrap();
    // Added back (as a learner, still down): dialed again.
    let addr = setup.addrs[removed as usize - 1].to_string();
    smol::block_on(admin.admin(AdminOp::AddLearner { id: removed, addr })).unwrap();
    let redialed = wait_for(Duration::from_secs(10), || {
        (dials(&nodes) > after).then_some(())
    });
    assert!(redialed.is_some(), "node {removed} added back is dialed");
    client.close();
    admin.close();
    for (_, node) in nodes {
        node.shutdown().unwrap();
    }
}
