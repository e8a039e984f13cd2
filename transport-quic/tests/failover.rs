//! Failover as a client sees it, with real `coracle node` processes on 127.0.0.1 (issue 15,
//! items 2 and 3): how long writers stall when the leader is killed (`kill -9`) or paused
//! (SIGSTOP) under a write load, that a leader cut off from its peers does not hold a
//! client, and that a write retried on the new leader after a kill is applied once.
//!
//! The nodes run with the default Raft timings (election timeout 300 ms, heartbeat 50 ms)
//! and the writers with the client library's defaults: what users get.
//!
//! `cargo test --release -p coracle-quic --test failover -- --ignored --nocapture` measures
//! the distribution of the write gap over 20 kills and 20 pauses.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{spawn_with, wait_for, Proc, Setup, BIN};
use coracle_quic::client::Client;
use coracle_quic::protocol::{Consistency, NodeStatus, Response, WriteOutcome};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default Raft timings (`[raft]` left out of `node.toml`).
const ELECTION_TIMEOUT: Duration = Duration::from_millis(300);

/// Node `id`'s configuration with the default Raft timings and QUIC keep-alive and idle
/// timeouts (the test helpers' shorter ones taken out: a node's 1 s idle timeout would
/// close a client's connection to a dead node after 1 s, which the default 3 s does not);
/// only the helpers' quick redial stays, so a restarted node rejoins fast.
fn write_default_config(setup: &Setup, id: u64) -> PathBuf {
    let text = setup
        .config_text(id)
        .replace("[raft]\nelection_timeout_ms = 200\nheartbeat_ms = 30\n", "")
        .replace("keep_alive_ms = 200\nidle_timeout_ms = 1000\n", "");
    assert!(!text.contains("election_timeout_ms"), "{text}");
    assert!(!text.contains("idle_timeout_ms"), "{text}");
    let path = setup.path().join(format!("node-{id}-default.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Three nodes with the default timings, and their processes.
struct Cluster {
    setup: Setup,
    configs: Vec<PathBuf>,
    procs: Vec<Proc>,
    /// Asks the nodes for their status (short attempts: a paused node must not hold it).
    probe: Client,
}

impl Cluster {
    fn start(tag: &str) -> Cluster {
        let setup = Setup::new(tag, 3);
        let configs: Vec<PathBuf> = (1..=3).map(|id| write_default_config(&setup, id)).collect();
        let procs = common::spawn_all(&setup, &configs);
        let probe = setup
            .client("client-alice")
            .with_attempt_timeout(Duration::from_millis(300))
            .with_connect_timeout(Duration::from_millis(300));
        Cluster {
            setup,
            configs,
            procs,
            probe,
        }
    }

    fn addr(&self, id: u64) -> SocketAddr {
        self.setup.addrs[id as usize - 1]
    }

    fn status(&self, id: u64) -> Option<NodeStatus> {
        smol::block_on(self.probe.status_of(self.addr(id))).ok()
    }

    /// The leader that every node in `ids` names, in the same term (the leader among them).
    fn agreed_leader(&self, ids: &[u64]) -> Option<u64> {
        let all: Vec<NodeStatus> = ids
            .iter()
            .map(|&id| self.status(id))
            .collect::<Option<_>>()?;
        let leader = all.iter().find(|s| s.role == "Leader")?;
        all.iter()
            .all(|s| s.leader == Some(leader.id) && s.term == leader.term)
            .then_some(leader.id)
    }

    /// The leader all three nodes agree on (waited for).
    fn leader(&self) -> u64 {
        wait_for(Duration::from_secs(30), || self.agreed_leader(&[1, 2, 3]))
            .expect("a leader all nodes agree on within 30 s")
    }

    /// Waits until all three nodes agree on a leader and node `id` has applied what the
    /// leader had committed when asked.
    fn wait_rejoined(&self, id: u64) -> u64 {
        wait_for(Duration::from_secs(30), || {
            let leader = self.agreed_leader(&[1, 2, 3])?;
            let commit = self.status(leader)?.commit;
            (self.status(id)?.applied >= commit).then_some(leader)
        })
        .unwrap_or_else(|| panic!("node {id} did not rejoin the cluster within 30 s"))
    }

    fn pid(&self, id: u64) -> String {
        self.procs[id as usize - 1]
            .0
            .as_ref()
            .unwrap()
            .id()
            .to_string()
    }

    fn signal(&self, id: u64, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.pid(id)])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} of node {id}");
    }

    fn restart(&mut self, id: u64) {
        self.procs[id as usize - 1] = spawn_with(&self.setup, id, &self.configs[id as usize - 1]);
    }
}

/// What one writer did: each write's number, whether it was acknowledged and the previous
/// value it returned.
type WriterLog = Vec<(u64, Result<Option<u64>, String>)>;

/// When a writer issued each of its acknowledged writes, and when the acknowledgement came.
type Acks = Mutex<Vec<(Instant, Instant)>>;

/// Writers that each put their own key (`w{w}`) in a closed loop, with the client
/// library's default settings; each write's value is its number, and asks for the value
/// it replaced.
struct Load {
    stop: Arc<AtomicBool>,
    /// Each writer's acknowledgements.
    acks: Arc<Vec<Acks>>,
    threads: Vec<JoinHandle<WriterLog>>,
}

impl Load {
    fn start(setup: &Setup, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Vec<Acks>> = Arc::new((0..writers).map(|_| Acks::default()).collect());
        let threads = (0..writers)
            .map(|w| {
                let (stop, acks) = (stop.clone(), acks.clone());
                // The library's defaults: no test-specific timeouts.
                let client =
                    Client::new(&setup.creds("client-alice"), setup.addrs.clone()).unwrap();
                // Named: the client's log (CORACLE_TEST_CLIENT_LOG) tells the writers apart.
                let thread = std::thread::Builder::new().name(format!("writer-{w}"));
                thread
                    .spawn(move || {
                        let mut log = WriterLog::new();
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            n += 1;
                            let issued = Instant::now();
                            let put = client.put_returning_previous(format!("w{w}"), n.to_string());
                            let result = match smol::block_on(put) {
                                Ok(previous) => {
                                    acks[w].lock().unwrap().push((issued, Instant::now()));
                                    Ok(previous
                                        .map(|p| String::from_utf8(p).unwrap().parse().unwrap()))
                                }
                                Err(e) => Err(e.to_string()),
                            };
                            log.push((n, result));
                        }
                        client.close();
                        log
                    })
                    .unwrap()
            })
            .collect();
        Load {
            stop,
            acks,
            threads,
        }
    }

    fn acknowledged(&self) -> usize {
        self.acks.iter().map(|a| a.lock().unwrap().len()).sum()
    }

    /// Waits until every writer had a write issued after `t` acknowledged, and returns the
    /// longest a writer went without an acknowledgement from its last one before `t` to
    /// that one. (Answers the leader sent just before `t` may still arrive after it: the
    /// writer's next write is the one that waits.)
    fn gap_across(&self, t: Instant) -> Duration {
        let resumed = wait_for(Duration::from_secs(30), || {
            self.acks
                .iter()
                .all(|a| {
                    a.lock()
                        .unwrap()
                        .last()
                        .is_some_and(|&(issued, _)| issued > t)
                })
                .then_some(())
        });
        assert!(
            resumed.is_some(),
            "some writer had no write acknowledged within 30 s"
        );
        self.acks
            .iter()
            .map(|a| {
                let a = a.lock().unwrap();
                let mut previous = a.iter().rev().find(|x| x.1 <= t).map_or(t, |x| x.1);
                let mut gap = Duration::ZERO;
                for &(issued, acked) in a.iter().filter(|x| x.1 > t) {
                    gap = gap.max(acked - previous);
                    previous = acked;
                    if issued > t {
                        break;
                    }
                }
                gap
            })
            .max()
            .unwrap()
    }

    /// Stops the writers; checks that no write was applied twice and returns each
    /// writer's last acknowledged value and how many of its writes failed.
    fn finish(self) -> Vec<(Option<u64>, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        let logs: Vec<WriterLog> = self
            .threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        logs.iter()
            .enumerate()
            .map(|(w, log)| check_writer(w, log))
            .collect()
    }
}

/// A writer's writes are sequential, and a write that failed is never applied after a later
/// one (the next write's `ack_below` retires it). So the value each acknowledged write
/// replaced is that of the last acknowledged write before it or of a failed write after
/// that one; an older value means a write was applied twice. Returns the last acknowledged
/// and the number of writes that failed.
fn check_writer(w: usize, log: &WriterLog) -> (Option<u64>, usize) {
    let mut last_acked: Option<u64> = None;
    let mut errors = 0;
    for (n, result) in log {
        match result {
            Ok(previous) => {
                let ok = match (last_acked, previous) {
                    (Some(a), Some(p)) => a <= *p && p < n,
                    (Some(_), None) => false,
                    (None, Some(p)) => p < n,
                    (None, None) => true,
                };
                assert!(
                    ok,
                    "writer {w}: write {n} replaced {previous:?}, but write {last_acked:?} was \
                     acknowledged before it: a write was applied twice or lost"
                );
                last_acked = Some(*n);
            }
            Err(e) => {
                errors += 1;
                println!("writer {w}: write {n} failed: {e}");
            }
        }
    }
    println!(
        "writer {w}: {} writes, {} acknowledged, {errors} failed",
        log.len(),
        log.len() - errors
    );
    (last_acked, errors)
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `kill -9` of the leader, then a restart from its data directory.
    Kill,
    /// SIGSTOP of the leader, then SIGCONT.
    Pause,
    /// SIGTERM: a planned restart (the leader hands leadership over, exits, and is
    /// started again from its data directory).
    Stop,
}

/// The tests of this file start clusters of processes: one at a time, on these 2 cores.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// What a run of faults cost, round by round, and how many writes failed in all.
#[derive(Debug)]
struct Rounds {
    rounds: Vec<Round>,
    /// Writes that failed (the client gave up on them) across every round.
    failed: usize,
}

/// What one fault cost: the longest a writer waited, and when a new leader was seen.
#[derive(Clone, Copy, Debug)]
struct Round {
    /// The longest a writer went without an acknowledged write across the fault.
    gap: Duration,
    /// From the fault to a status answer of a new leader (polled every few ms).
    election: Duration,
}

/// Polls the nodes at `addrs` until one leads in a term above `term`; when it was seen.
fn watch_election(
    observer: Arc<Client>,
    addrs: Vec<SocketAddr>,
    term: u64,
) -> JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let statuses = smol::block_on(observer.statuses(&addrs));
            if statuses
                .into_iter()
                .flatten()
                .any(|s| s.role == "Leader" && s.term > term)
            {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    })
}

/// Node `id`'s log (colours taken out) shows that, after its last SIGTERM, it followed a
/// new leader before it shut down: it handed leadership over rather than leaving the
/// cluster to an election timeout.
fn assert_handed_over(setup: &Setup, id: u64) {
    let raw = std::fs::read_to_string(common::node_log(setup, id)).unwrap();
    let mut log = String::new();
    let mut escape = false;
    for c in raw.chars() {
        match c {
            '\x1b' => escape = true,
            'm' if escape => escape = false,
            _ if escape => {}
            _ => log.push(c),
        }
    }
    let last_stop = log
        .rfind("signal received; shutting down")
        .expect("the signal logged");
    let tail = &log[last_stop..];
    let exit = tail
        .find("runtime: shutting down node=")
        .expect("the shutdown logged");
    assert!(
        tail[..exit]
            .lines()
            .any(|l| l.contains("role=Follower") && l.contains("leader=Some(")),
        "node {id} stopped without handing leadership over:\n{tail}"
    );
}

/// Runs `rounds` of `fault` on the leader of a write load; what each cost.
fn fault_rounds(tag: &str, fault: Fault, rounds: usize) -> Rounds {
    if std::env::var_os("CORACLE_TEST_CLIENT_LOG").is_some() {
        use tracing_subscriber::prelude::*;
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target("coracle_quic::client", tracing::Level::DEBUG)
            .with_target("failover", tracing::Level::INFO);
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_thread_names(true)
                    .with_filter(targets),
            )
            .try_init();
    }
    let mut cluster = Cluster::start(tag);
    cluster.leader();
    let observer = Arc::new(
        cluster
            .setup
            .client("client-alice")
            .with_attempt_timeout(Duration::from_millis(100)),
    );
    let load = Load::start(&cluster.setup, 4);
    let loaded = wait_for(Duration::from_secs(30), || {
        (load.acknowledged() >= 100).then_some(())
    });
    assert!(loaded.is_some(), "the cluster took no write load");
    let mut results = Vec::new();
    for round in 0..rounds {
        // Some load under the current leader first.
        std::thread::sleep(Duration::from_millis(300));
        let leader = cluster.leader();
        let term = cluster.status(leader).map_or(0, |s| s.term);
        let survivors = (1..=3)
            .filter(|&i| i != leader)
            .map(|i| cluster.addr(i))
            .collect();
        cluster.signal(
            leader,
            match fault {
                Fault::Kill => "-KILL",
                Fault::Pause => "-STOP",
                Fault::Stop => "-TERM",
            },
        );
        // Once the signal is surely delivered (`kill` ran as a process of its own, so a
        // write issued just before could still be answered), and before the killed
        // process is reaped (which takes up to 100 ms).
        let at = Instant::now();
        if let Fault::Kill = fault {
            cluster.procs[leader as usize - 1].kill();
        }
        tracing::info!(round, leader, ?fault, "fault");
        let elected = watch_election(observer.clone(), survivors, term);
        let gap = load.gap_across(at);
        let election = elected.join().unwrap().expect("a new leader within 30 s") - at;
        println!(
            "{fault:?} {round}: leader node {leader}: new leader seen after {election:?}; \
             the writers stalled for at most {gap:?}"
        );
        results.push(Round { gap, election });
        match fault {
            Fault::Kill => cluster.restart(leader),
            Fault::Pause => cluster.signal(leader, "-CONT"),
            Fault::Stop => {
                cluster.procs[leader as usize - 1]
                    .wait_exit(Duration::from_secs(10))
                    .expect("the leader exits within 10 s of SIGTERM");
                keep_logs(&cluster.setup, tag);
                assert_handed_over(&cluster.setup, leader);
                cluster.restart(leader)
            }
        }
        cluster.wait_rejoined(leader);
    }
    let writers = load.finish();
    let failed = writers.iter().map(|&(_, failed)| failed).sum();
    // Every writer's last acknowledged write (or a later one) is what the cluster holds.
    smol::block_on(async {
        for (w, (last, _)) in writers.iter().enumerate() {
            let v = cluster.probe.get(format!("w{w}")).await.unwrap();
            let v: Option<u64> = v.map(|v| String::from_utf8(v).unwrap().parse().unwrap());
            assert!(
                v >= *last,
                "writer {w}: the cluster holds {v:?}, acknowledged {last:?}"
            );
        }
    });
    observer.close();
    keep_logs(&cluster.setup, tag);
    Rounds {
        rounds: results,
        failed,
    }
}

/// With `CORACLE_TEST_CLIENT_LOG` set, copies the nodes' logs where they outlive the test.
fn keep_logs(setup: &Setup, tag: &str) {
    if std::env::var_os("CORACLE_TEST_CLIENT_LOG").is_none() {
        return;
    }
    let kept = std::env::temp_dir().join(format!("coracle-{tag}-logs"));
    std::fs::create_dir_all(&kept).unwrap();
    for id in 1..=3 {
        let _ = std::fs::copy(
            common::node_log(setup, id),
            kept.join(format!("node-{id}.log")),
        );
    }
    println!("the nodes' logs are in {}", kept.display());
}

fn distribution(values: &[Duration]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort();
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    format!(
        "min {} median {} p90 {} max {}",
        ms(sorted[0]),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(sorted[sorted.len() - 1])
    )
}

fn summary(name: &str, rounds: &Rounds) -> String {
    let failed = rounds.failed;
    let rounds = &rounds.rounds;
    let gaps: Vec<Duration> = rounds.iter().map(|r| r.gap).collect();
    let elections: Vec<Duration> = rounds.iter().map(|r| r.election).collect();
    let after: Vec<Duration> = rounds
        .iter()
        .map(|r| r.gap.saturating_sub(r.election))
        .collect();
    format!(
        "{name}, {} rounds (election timeout {ELECTION_TIMEOUT:?}), {failed} writes failed:\n  \
         write gap        {}\n  new leader seen  {}\n  gap - election   {}",
        rounds.len(),
        distribution(&gaps),
        distribution(&elections),
        distribution(&after),
    )
}

/// The bound is loose on purpose: the new leader is elected 1 to 2 election timeouts after
/// the last heartbeat (300-600 ms, the timeout is drawn at random), and these machines are
/// shared and slow (the nodes run as debug builds here). Before the fix every writer waited
/// out the client's fixed 2 s attempt timeout on the dead node (2.0-2.2 s); the target,
/// election timeout + 200 ms, is measured by the ignored test below, not asserted.
const LOOSE_BOUND: Duration = Duration::from_millis(1500);

/// Three rounds of `fault` on the leader of a write load: no writer stalls beyond the
/// loose bound.
fn writers_follow_the_cluster(tag: &str, fault: Fault, name: &str) {
    let _one = one_cluster_at_a_time();
    let rounds = fault_rounds(tag, fault, 3);
    println!("{}", summary(name, &rounds));
    for r in &rounds.rounds {
        assert!(
            r.gap < LOOSE_BOUND,
            "a writer stalled for {:?}: {rounds:?}",
            r.gap
        );
    }
}

#[test]
fn writers_follow_the_cluster_after_the_leader_is_killed() {
    writers_follow_the_cluster("failover-kill", Fault::Kill, "kill -9");
}

#[test]
fn writers_follow_the_cluster_after_the_leader_is_paused() {
    writers_follow_the_cluster("failover-pause", Fault::Pause, "SIGSTOP");
}

/// A planned restart of the leader (SIGTERM) under a write load: the leader hands
/// leadership to the most caught-up voter and follows the new leader before it exits
/// (checked in its log, every round), so the cluster has a new leader after a round of
/// TimeoutNow and a vote rather than an election timeout after the leader is gone; every
/// acknowledged write is kept, and every write succeeds (the writes that come during the
/// hand-over are held by the old leader and sent to the new one, never failed).
#[test]
fn a_planned_leader_restart_hands_leadership_over_first() {
    let _one = one_cluster_at_a_time();
    let rounds = fault_rounds("failover-stop", Fault::Stop, 3);
    println!("{}", summary("SIGTERM", &rounds));
    assert_planned_restarts_kept_writes_flowing(&rounds);
}

/// A bound on a writer's stall across a planned leader restart that holds on a loaded,
/// shared machine with debug builds: generous on purpose (the target, under 50 ms at the
/// median, is measured by the ignored test below, not asserted). A hand-over that failed
/// (the cluster left to an election timeout, 300-600 ms, and clients pausing after "retry"
/// answers) stays under it too; the log check of every round tells a hand-over happened.
const PLANNED_BOUND: Duration = Duration::from_secs(2);

/// No write failed, and no writer stalled beyond [`PLANNED_BOUND`].
fn assert_planned_restarts_kept_writes_flowing(rounds: &Rounds) {
    assert_eq!(rounds.failed, 0, "writes failed: {rounds:?}");
    for r in &rounds.rounds {
        assert!(
            r.gap < PLANNED_BOUND,
            "a writer stalled for {:?}: {rounds:?}",
            r.gap
        );
    }
}

/// The planned leader restart measured: 20 rounds (the figures of the README's table).
#[test]
#[ignore]
fn planned_leader_restart_gap_over_20_rounds() {
    let _one = one_cluster_at_a_time();
    let stops = fault_rounds("failover-stop20", Fault::Stop, 20);
    println!("{}", summary("SIGTERM", &stops));
    assert_planned_restarts_kept_writes_flowing(&stops);
}

/// The measurement of issue 15's item 2: 20 kills and 20 pauses of the leader under a
/// write load, and the distribution of the longest stall of a writer across each. Run
/// with `--release`.
#[test]
#[ignore]
fn failover_gap_distribution_over_20_kills_and_20_pauses() {
    let _one = one_cluster_at_a_time();
    let kills = fault_rounds("failover-kill20", Fault::Kill, 20);
    let pauses = fault_rounds("failover-pause20", Fault::Pause, 20);
    println!("{}", summary("kill -9", &kills));
    println!("{}", summary("SIGSTOP", &pauses));
}

/// A write whose answer was lost with the leader (here: the client asks again, as it does
/// when the leader dies before answering) is retried on the new leader with the same
/// session and sequence number, and is not applied again: the retry returns the outcome of
/// the first application, and the value written after it stays.
#[test]
fn a_write_retried_on_the_new_leader_after_a_kill_is_applied_once() {
    let _one = one_cluster_at_a_time();
    let mut cluster = Cluster::start("failover-once");
    let leader = cluster.leader();
    let write = |seq: u64, value: &str| common::session_put(0x5eed, seq, "k", value);
    let client = Client::new(
        &cluster.setup.creds("client-alice"),
        cluster.setup.addrs.clone(),
    )
    .unwrap();
    smol::block_on(async {
        let first = client.call(&write(1, "one")).await.unwrap();
        let Response::Written { outcome, .. } = first else {
            panic!("{first:?}")
        };
        assert_eq!(outcome, WriteOutcome::Done { previous: None });
        client.call(&write(2, "two")).await.unwrap();
    });
    cluster.procs[leader as usize - 1].kill();
    let killed = Instant::now();
    smol::block_on(async {
        let retry = client.call(&write(1, "one")).await.unwrap();
        println!(
            "the retry was answered {:?} after the kill",
            killed.elapsed()
        );
        let Response::Written { outcome, .. } = retry else {
            panic!("{retry:?}")
        };
        assert_eq!(outcome, WriteOutcome::Done { previous: None });
        assert_eq!(client.get("k").await.unwrap(), Some(b"two".to_vec()));
    });
    let survivors: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let new = wait_for(Duration::from_secs(30), || {
        cluster.agreed_leader(&survivors)
    });
    assert!(new.is_some_and(|n| n != leader), "{new:?}");
    client.close();
}

/// Issue 15, item 3: the leader L is cut off from its peers A and B (clients still reach
/// it). A client given `--nodes L,A,B` must not wait on L (writes, reads, admin calls): the
/// majority elects a new leader within about an election timeout, and L answers "retry"
/// once check-quorum deposes it.
/// Before the fix the client asked L again and again and failed after its whole timeout,
/// while `--nodes A,B,L` succeeded at once.
#[test]
fn a_leader_cut_off_from_its_peers_does_not_hold_the_command() {
    let _one = one_cluster_at_a_time();
    let cluster = Cluster::start("failover-isolated");
    let l = cluster.leader();
    let others: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
    let list = |ids: &[u64]| {
        ids.iter()
            .map(|&i| cluster.addr(i).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let coracle = |args: &[&str]| {
        let started = Instant::now();
        let out = Command::new(BIN)
            .args(args)
            .arg("--certs")
            .arg(cluster.setup.certs())
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let ok = |(out, took): (std::process::Output, Duration), what: &str| {
        assert!(
            out.status.success(),
            "{what} failed after {took:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{what}: {took:?}");
        took
    };
    ok(
        coracle(&[
            "admin",
            "isolate",
            &ids(&others),
            "--nodes",
            &list(&[l]),
            "--name",
            "ops",
        ]),
        "isolate L",
    );
    ok(
        coracle(&[
            "admin",
            "isolate",
            &l.to_string(),
            "--nodes",
            &list(&others),
            "--name",
            "ops",
        ]),
        "isolate A and B",
    );
    let l_first = list(&[l, others[0], others[1]]);
    let kv = |args: &[&str]| {
        let mut all = vec![
            "kv",
            "--nodes",
            &l_first,
            "--name",
            "alice",
            "--timeout-ms",
            "5000",
        ];
        all.extend_from_slice(args);
        coracle(&all)
    };
    // At once (L may still believe it leads), then once check-quorum has deposed it.
    ok(
        kv(&["put", "k", "v"]),
        "put through L,A,B right after the split",
    );
    std::thread::sleep(ELECTION_TIMEOUT * 3);
    ok(
        kv(&["put", "k", "w"]),
        "put through L,A,B after L stepped down",
    );
    let (out, took) = kv(&["get", "k"]);
    let took = ok((out.clone(), took), "linearizable get through L,A,B");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "w", "{took:?}");
    // An admin call takes the same way: leadership handed from the majority's leader to
    // the other node of the majority.
    let m = cluster
        .status(others[0])
        .and_then(|s| s.leader)
        .expect("the majority has a leader");
    let to = if m == others[0] { others[1] } else { others[0] };
    ok(
        coracle(&[
            "admin",
            "transfer",
            &to.to_string(),
            "--nodes",
            &l_first,
            "--name",
            "ops",
            "--timeout-ms",
            "5000",
        ]),
        "admin transfer through L,A,B",
    );
    ok(
        coracle(&[
            "admin",
            "heal",
            "--nodes",
            &list(&[l, others[0], others[1]]),
            "--name",
            "ops",
        ]),
        "heal",
    );
}

/// A read any node may serve (stale) that waits on a paused node moves to a node that
/// answers. Before, it waited out the 2 s attempt timeout (the bound is loose for the
/// same reasons as above).
#[test]
fn a_stale_read_waiting_on_a_paused_node_moves_to_a_node_that_answers() {
    let _one = one_cluster_at_a_time();
    let cluster = Cluster::start("failover-stale");
    let leader = cluster.leader();
    let client = Client::new(
        &cluster.setup.creds("client-alice"),
        cluster.setup.addrs.clone(),
    )
    .unwrap();
    smol::block_on(client.put("k", "v")).unwrap();
    // Every node has applied it (a stale read on a follower sees it).
    wait_for(Duration::from_secs(10), || {
        (1..=3)
            .all(|id| {
                cluster
                    .status(id)
                    .is_some_and(|s| s.applied >= 1 && s.keys == 1)
            })
            .then_some(())
    })
    .expect("the write applied everywhere");
    // The client's last answer came from the leader: its next stale read goes there.
    cluster.signal(leader, "-STOP");
    let started = Instant::now();
    let read = smol::block_on(client.get_with("k", Consistency::Stale));
    let took = started.elapsed();
    cluster.signal(leader, "-CONT");
    println!("stale read with the node it went to paused: {took:?}");
    assert_eq!(read.unwrap(), Some(b"v".to_vec()));
    assert!(took < LOOSE_BOUND, "the stale read took {took:?}");
    client.close();
}
