//! Restarted peers reconnect at once (issue 17): a follower that restarts, by `kill -9` or
//! gracefully (SIGTERM), is caught up with the leader's commit index promptly, not after
//! the QUIC idle timeout (3 s by default) that the leader's stale connection used to take
//! to die. Real `coracle node` processes on 127.0.0.1 with the default Raft and transport
//! settings (what users get).
//!
//! The leader is node 1, so each restarted follower is one the leader dials: the path that
//! waited on the idle timeout. (A restarted node with the lower id dials the leader itself.)
//!
//! `cargo test --release -p coracle-quic --test reconnect -- --ignored --nocapture`
//! measures the catch-up time over 10 restarts of each kind (`CORACLE_TEST_KEEP_LOGS=DIR`
//! keeps the nodes' logs there).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{spawn_with, wait_for, Proc, Setup};
use coracle_quic::client::Client;
use coracle_quic::protocol::{AdminOp, NodeStatus};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The liveness bound of one catch-up, from the restarted node's start to its applied
/// index reaching the leader's commit: the process starts in a few hundred milliseconds
/// and a reconnect and a few round trips on loopback take milliseconds, so this is a
/// generous margin; the bug it catches took the 3 s idle timeout.
const CATCH_UP_BOUND: Duration = Duration::from_millis(1500);

/// Entries written while the follower is down (it has them to catch up on).
const WRITES_WHILE_DOWN: usize = 20;

#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `kill -9`: the node's connections are left as they were.
    Kill,
    /// SIGTERM: the node closes its connections and exits.
    Graceful,
}

struct Cluster {
    setup: Setup,
    configs: Vec<PathBuf>,
    procs: Vec<Proc>,
    /// Status probes, with short attempts.
    probe: Client,
    /// Writes and admin operations.
    ops: Client,
}

/// Node `id`'s configuration with the default Raft and transport settings.
fn write_default_config(setup: &Setup, id: u64) -> PathBuf {
    let text = setup.config_text(id);
    let text = &text[..text.find("[raft]").unwrap()];
    let path = setup.path().join(format!("node-{id}-default.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A client for status probes, with short attempts.
fn probe(setup: &Setup) -> Client {
    setup
        .client("client-alice")
        .with_attempt_timeout(Duration::from_millis(200))
        .with_connect_timeout(Duration::from_millis(200))
}

impl Cluster {
    fn start(tag: &str) -> Cluster {
        let setup = Setup::new(tag, 3);
        let configs: Vec<PathBuf> = (1..=3).map(|id| write_default_config(&setup, id)).collect();
        let procs = common::spawn_all(&setup, &configs);
        let probe = probe(&setup);
        let ops = setup.client("admin-ops");
        Cluster {
            setup,
            configs,
            procs,
            probe,
            ops,
        }
    }

    fn status(&self, id: u64) -> Option<NodeStatus> {
        smol::block_on(self.probe.status_of(self.setup.addrs[id as usize - 1])).ok()
    }

    /// Makes node 1 the leader all three nodes agree on.
    fn lead_with_node_1(&self) {
        let agreed = || {
            let all: Vec<NodeStatus> = (1..=3).map(|id| self.status(id)).collect::<Option<_>>()?;
            let leader = all.iter().find(|s| s.role == "Leader")?;
            all.iter()
                .all(|s| s.leader == Some(leader.id) && s.term == leader.term)
                .then_some(leader.id)
        };
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            match agreed() {
                Some(1) => return,
                Some(_) => {
                    let _ = smol::block_on(self.ops.admin(AdminOp::Transfer { id: 1 }));
                }
                None => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node 1 did not become the leader all nodes agree on within 30 s");
    }

    /// Stops follower `id`, writes while it is down, restarts it, and returns how long it
    /// took from its start to its applied index reaching the leader's commit.
    fn restart(&mut self, id: u64, stop: Stop) -> Duration {
        let proc = &mut self.procs[id as usize - 1];
        match stop {
            Stop::Kill => proc.kill(),
            Stop::Graceful => {
                let pid = proc.0.as_ref().unwrap().id().to_string();
                assert!(std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap()
                    .success());
                proc.wait_exit(Duration::from_secs(10))
                    .expect("the node exits within 10 s of SIGTERM");
            }
        }
        smol::block_on(async {
            for i in 0..WRITES_WHILE_DOWN {
                self.ops.put(format!("down-{i}"), "x").await.unwrap();
            }
        });
        let commit = self.status(1).expect("the leader answers").commit;
        let started = Instant::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.procs[id as usize - 1] = spawn_with(&self.setup, id, &self.configs[id as usize - 1]);
        // A new client: the probe's connection to the old process is as stale as the
        // leader's was, and this measures the nodes' connections, not the client's.
        let probe = probe(&self.setup);
        let addr = self.setup.addrs[id as usize - 1];
        let status = || smol::block_on(probe.status_of(addr)).ok();
        let up = wait_for(Duration::from_secs(10), status)
            .expect("the restarted node answers within 10 s");
        let answered = started.elapsed();
        wait_for(Duration::from_secs(30), || {
            status().filter(|s| s.applied >= commit)
        })
        .unwrap_or_else(|| panic!("node {id} did not catch up within 30 s"));
        let took = started.elapsed();
        println!(
            "node {id} started at {}.{:03} (Unix time): answered {answered:?} later (applied {} of {commit}), caught up after {took:?}",
            wall.as_secs(),
            wall.subsec_millis(),
            up.applied
        );
        probe.close();
        took
    }
}

/// Restarts followers 2 and 3 (by `kill -9` and by SIGTERM) `rounds` times each; the
/// catch-up times.
fn restarts(tag: &str, rounds: usize) -> Vec<(u64, Stop, Duration)> {
    let mut cluster = Cluster::start(tag);
    let mut times = Vec::new();
    for round in 0..rounds {
        for (id, stop) in [
            (2, Stop::Kill),
            (3, Stop::Graceful),
            (3, Stop::Kill),
            (2, Stop::Graceful),
        ] {
            cluster.lead_with_node_1();
            let took = cluster.restart(id, stop);
            println!("round {round}: node {id} after {stop:?}: caught up in {took:?}");
            times.push((id, stop, took));
        }
    }
    if let Some(dir) = std::env::var_os("CORACLE_TEST_KEEP_LOGS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for id in 1..=3 {
            let _ = std::fs::copy(
                common::node_log(&cluster.setup, id),
                dir.join(format!("{tag}-node-{id}.log")),
            );
        }
    }
    times
}

#[test]
fn a_restarted_follower_catches_up_at_once_after_kill_and_after_sigterm() {
    for (id, stop, took) in restarts("reconnect", 1) {
        assert!(
            took < CATCH_UP_BOUND,
            "node {id} restarted after {stop:?} took {took:?} to catch up (bound {CATCH_UP_BOUND:?})"
        );
    }
}

#[test]
#[ignore = "a measurement: 10 restarts of each kind; run by hand with --nocapture"]
fn catch_up_after_restart_measured() {
    let times = restarts("reconnect-measured", 5);
    for kind in ["Kill", "Graceful"] {
        let mut t: Vec<Duration> = times
            .iter()
            .filter(|(_, s, _)| format!("{s:?}") == kind)
            .map(|x| x.2)
            .collect();
        t.sort();
        println!(
            "{kind}: {} restarts: min {:?}, median {:?}, max {:?}",
            t.len(),
            t[0],
            t[t.len() / 2],
            t[t.len() - 1]
        );
    }
}
