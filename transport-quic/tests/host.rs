//! The host API with a state machine that is not the KV store: a replicated counter on
//! nodes in this test process, each with its own QUIC endpoint on 127.0.0.1, data
//! directory and threads. Proposals on the leader and on a follower, linearizable reads,
//! streamed snapshots across a restart and to a follower that fell behind, and a state
//! machine that fails on apply.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{wait_for, Setup};
use coracle::{Index, NodeId, Role};
use coracle_quic::config::NodeConfig;
use coracle_quic::host::{
    ApplyError, Handle, Host, NodeError, ProposeError, ReadMode, ResponseCodec, RestoreError,
    SnapshotError, SnapshotRequestError, SnapshotSource, StateMachine,
};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A counter that remembers every amount added (so its state grows with the log and a
/// snapshot of it takes many chunks). Commands: 8 bytes, the amount (little-endian);
/// `b"fail"` makes `apply` return an error, `b"panic"` makes it panic; `b"refuse"` makes
/// its snapshots fail to begin, `b"break"` makes their views fail half-way, `b"heal"`
/// ends both.
#[derive(Default)]
struct Counter {
    total: u64,
    adds: Vec<u64>,
    /// Adds proposed with a request id (`add_on_leader`): the total each one answered, so a
    /// retried request is applied once and answered alike (a client session in small).
    requests: BTreeMap<u64, u64>,
    /// Snapshots restored into this counter (from the leader or at a start).
    restores: u32,
    /// The last of `refuse`, `break` or `heal` applied.
    snapshots: &'static [u8],
}

/// A counter's snapshot: a copy of its state, or one that fails half-way.
struct View {
    bytes: std::io::Cursor<Vec<u8>>,
    broken: bool,
}

impl SnapshotSource for View {
    fn write_to(&mut self, sink: &mut dyn std::io::Write) -> std::io::Result<()> {
        if self.broken {
            let half = self.bytes.get_ref().len() / 2;
            sink.write_all(&self.bytes.get_ref()[..half])?;
            return Err(std::io::Error::other("the view broke half-way"));
        }
        std::io::copy(&mut self.bytes, sink).map(|_| ())
    }
}

impl StateMachine for Counter {
    type Response = u64;
    type Snapshot = View;

    fn apply(&mut self, _index: Index, command: &[u8]) -> Result<u64, ApplyError> {
        match command {
            b"fail" => return Err(ApplyError::Failed("the counter refuses 'fail'".into())),
            b"panic" => panic!("the counter panics on 'panic'"),
            b"refuse" | b"break" | b"heal" => {
                self.snapshots = match command {
                    b"refuse" => b"refuse",
                    b"break" => b"break",
                    _ => b"heal",
                };
                return Ok(self.total);
            }
            _ => {}
        }
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let request = (command.len() == 16).then(|| word(&command[8..]));
        if let Some(total) = request.and_then(|id| self.requests.get(&id)) {
            return Ok(*total);
        }
        let amount = word(&command[..command.len().min(8)]);
        self.total += amount;
        self.adds.push(amount);
        if let Some(id) = request {
            self.requests.insert(id, self.total);
        }
        Ok(self.total)
    }

    fn snapshot(&mut self, _applied: Index) -> Result<Self::Snapshot, SnapshotError> {
        if self.snapshots == b"refuse" {
            return Err(SnapshotError::Failed(
                "the counter refuses to snapshot".into(),
            ));
        }
        // A copy: a point-in-time view the snapshot thread streams to the file.
        let mut bytes = Vec::with_capacity(16 + 8 * self.adds.len());
        bytes.extend_from_slice(&self.total.to_le_bytes());
        bytes.extend_from_slice(&(self.adds.len() as u64).to_le_bytes());
        for a in &self.adds {
            bytes.extend_from_slice(&a.to_le_bytes());
        }
        bytes.extend_from_slice(&(self.requests.len() as u64).to_le_bytes());
        for (id, total) in &self.requests {
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&total.to_le_bytes());
        }
        Ok(View {
            bytes: std::io::Cursor::new(bytes),
            broken: self.snapshots == b"break",
        })
    }

    fn restore(&mut self, _index: Index, source: &mut dyn Read) -> Result<(), RestoreError> {
        let mut word = [0u8; 8];
        let mut next = |source: &mut dyn Read| {
            source.read_exact(&mut word).map_err(RestoreError::Io)?;
            Ok::<u64, RestoreError>(u64::from_le_bytes(word))
        };
        let total = next(source)?;
        let count = next(source)?;
        // Read a word at a time: never trust a length read from a file for an allocation.
        let mut adds = Vec::new();
        for _ in 0..count {
            adds.push(next(source)?);
        }
        if adds.iter().sum::<u64>() != total {
            return Err(RestoreError::Invalid("the total is not the sum".into()));
        }
        let mut requests = BTreeMap::new();
        for _ in 0..next(source)? {
            requests.insert(next(source)?, next(source)?);
        }
        *self = Counter {
            total,
            adds,
            requests,
            restores: self.restores + 1,
            snapshots: b"heal",
        };
        Ok(())
    }

    /// The total, little-endian: a follower forwards proposals to the leader.
    fn response_codec() -> Option<ResponseCodec<u64>> {
        Some(ResponseCodec {
            encode: |total| total.to_le_bytes().to_vec(),
            decode: |b| Some(u64::from_le_bytes(b.try_into().ok()?)),
        })
    }
}

/// Node `id`'s configuration, with `raft` added to its `[raft]` section and `tail` after
/// it.
fn config(setup: &Setup, id: u64, raft: &str, tail: &str) -> NodeConfig {
    let text = setup
        .config_text(id)
        .replace("[raft]\n", &format!("[raft]\n{raft}"))
        + tail;
    NodeConfig::parse(&text, setup.path()).unwrap()
}

/// Starts node `id` (retried while the endpoint of its previous run lets go of the port).
fn start_with(setup: &Setup, id: u64, raft: &str, tail: &str) -> Host<Counter> {
    wait_for(Duration::from_secs(10), || {
        Host::start(&config(setup, id, raft, tail), Counter::default()).ok()
    })
    .expect("node starts")
}

fn start(setup: &Setup, id: u64) -> Host<Counter> {
    start_with(setup, id, "", "")
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    smol::future::block_on(f)
}

/// The leader all `handles` agree on, waited for (a generous 20 s: elections on a shared
/// machine).
fn leader(handles: &[Handle<Counter>]) -> NodeId {
    wait_for(Duration::from_secs(20), || {
        let leaders: Vec<Option<NodeId>> = handles
            .iter()
            .map(|h| block_on(h.status()).and_then(|s| s.leader))
            .collect();
        let first = leaders[0]?;
        leaders.iter().all(|l| *l == Some(first)).then_some(first)
    })
    .expect("a leader")
}

fn add(n: u64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

/// Proposes `n` on the leader, retrying while leadership moves. The add carries a request
/// id of its own, so a retry after an unknown outcome (a timeout, a leader lost with the
/// entry appended) is applied once: retried without one, a loaded machine once counted an
/// add twice.
fn add_on_leader(handles: &[Handle<Counter>], n: u64) -> u64 {
    static REQUESTS: AtomicU64 = AtomicU64::new(1);
    let mut command = add(n);
    command.extend_from_slice(&REQUESTS.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    wait_for(Duration::from_secs(20), || {
        let l = leader(handles);
        let on = handles.iter().find(|h| h.id() == l)?;
        block_on(on.propose(command.clone())).ok()
    })
    .expect("the proposal is applied")
}

/// The test's own client session: an add retried with its request id is applied once and
/// answered alike, also after a snapshot and restore.
#[test]
fn an_add_retried_with_its_request_id_is_applied_once() {
    let mut c = Counter::default();
    let with_id = |n: u64, id: u64| [n.to_le_bytes(), id.to_le_bytes()].concat();
    assert_eq!(c.apply(1, &with_id(5, 7)).unwrap(), 5);
    assert_eq!(c.apply(2, &add(1)).unwrap(), 6);
    assert_eq!(
        c.apply(3, &with_id(5, 7)).unwrap(),
        5,
        "the first answer again"
    );
    let mut bytes = Vec::new();
    c.snapshot(3).unwrap().write_to(&mut bytes).unwrap();
    let mut back = Counter::default();
    back.restore(3, &mut bytes.as_slice()).unwrap();
    assert_eq!(back.apply(4, &with_id(5, 7)).unwrap(), 5);
    assert_eq!(back.apply(5, &with_id(5, 8)).unwrap(), 11);
    assert_eq!(back.adds, [5, 1, 5]);
}

#[test]
fn a_counter_on_three_nodes_proposes_redirects_and_reads() {
    let setup = Setup::new("host-counter", 3);
    // Forwarding off: a follower redirects (forwarding: the next test).
    let nodes: Vec<Host<Counter>> = (1..=3)
        .map(|id| start_with(&setup, id, "forward = false\n", ""))
        .collect();
    let handles: Vec<Handle<Counter>> = nodes.iter().map(Host::handle).collect();
    let watch = handles[0].watch();

    let mut expected = 0;
    for n in 1..=20 {
        expected += n;
        assert_eq!(add_on_leader(&handles, n), expected);
    }

    // A follower refuses, naming the leader and where it listens.
    let l = leader(&handles);
    let follower = handles.iter().find(|h| h.id() != l).unwrap();
    match block_on(follower.propose(add(1))) {
        Err(ProposeError::NotLeader { leader, address }) => {
            assert_eq!(leader, Some(l));
            assert_eq!(address, Some(setup.addrs[l as usize - 1].to_string()));
        }
        other => panic!("a follower answered {other:?}"),
    }

    // Linearizable reads, on every node (followers ask the leader to confirm), see every
    // acknowledged write; a lease read on the leader too.
    for h in &handles {
        let total = block_on(h.read(ReadMode::ReadIndex, |c: &Counter| c.total)).unwrap();
        assert_eq!(total, expected, "node {}", h.id());
    }
    let leader_handle = handles.iter().find(|h| h.id() == l).unwrap();
    let lease = wait_for(Duration::from_secs(5), || {
        block_on(leader_handle.read(ReadMode::Lease, |c: &Counter| c.total)).ok()
    });
    assert_eq!(lease, Some(expected));

    // The status names the members, with their lag on the leader.
    let status = block_on(leader_handle.status()).unwrap();
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.members.len(), 3);
    assert!(status
        .members
        .iter()
        .all(|m| m.voter && m.match_index.is_some() && m.lag.is_some()));
    assert!(status.applied >= 21, "{status:?}");

    // The watch saw the node learn of the leader.
    let seen = wait_for(Duration::from_secs(5), || {
        watch.try_recv().ok().filter(|s| s.leader == Some(l))
    });
    assert!(seen.is_some(), "no status with the leader was watched");

    for node in nodes {
        node.shutdown().unwrap();
    }
    // A handle on a stopped node answers at once, not after its timeout.
    assert_eq!(
        block_on(handles[0].propose(add(1))),
        Err(ProposeError::ShuttingDown)
    );
}

/// The amounts every node applied, read linearizably on each of `handles`.
fn applied_on(handles: &[Handle<Counter>]) -> Vec<Vec<u64>> {
    handles
        .iter()
        .map(|h| {
            wait_for(Duration::from_secs(20), || {
                block_on(h.read(ReadMode::ReadIndex, |c: &Counter| c.adds.clone())).ok()
            })
            .expect("a linearizable read")
        })
        .collect()
}

/// How many times each amount of `adds` was applied.
fn counts(adds: &[u64]) -> std::collections::HashMap<u64, usize> {
    let mut counts = std::collections::HashMap::new();
    for &a in adds {
        *counts.entry(a).or_insert(0) += 1;
    }
    counts
}

/// The median and the mean of `samples`.
fn median_mean(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
    (samples[samples.len() / 2], mean)
}

#[test]
fn writes_sent_only_to_followers_are_forwarded_and_applied_once() {
    let setup = Setup::new("host-forward", 3);
    let mut nodes: Vec<Option<Host<Counter>>> = (1..=3).map(|id| Some(start(&setup, id))).collect();
    let handles: Vec<Handle<Counter>> = nodes.iter().flatten().map(Host::handle).collect();
    add_on_leader(&handles, 1);
    let l = leader(&handles);
    let followers: Vec<Handle<Counter>> = handles.iter().filter(|h| h.id() != l).cloned().collect();

    // Every write goes to a follower, each a distinct amount; each is answered with the
    // leader's response (the total after it), in order.
    let mut total = 1;
    let mut forwarded = Vec::new();
    for n in 2..=201u64 {
        total += n;
        let began = std::time::Instant::now();
        let answer = block_on(followers[n as usize % 2].propose(add(n)));
        forwarded.push(began.elapsed());
        assert_eq!(
            answer,
            Ok(total),
            "write {n} via node {}",
            followers[n as usize % 2].id()
        );
    }
    let on_leader = &handles[l as usize - 1];
    let mut direct = Vec::new();
    for n in 202..=401u64 {
        total += n;
        let began = std::time::Instant::now();
        assert_eq!(block_on(on_leader.propose(add(n))), Ok(total));
        direct.push(began.elapsed());
    }
    let ((fp50, fmean), (dp50, dmean)) = (median_mean(forwarded), median_mean(direct));
    eprintln!(
        "forwarded write latency: p50 {fp50:?}, mean {fmean:?}; direct on the leader: p50 {dp50:?}, mean {dmean:?} (200 sequential writes each, in-process nodes over QUIC on loopback)"
    );
    for (h, adds) in handles.iter().zip(applied_on(&handles)) {
        let counts = counts(&adds);
        assert_eq!(adds.len(), 401, "node {}", h.id());
        assert!(
            (1..=401).all(|n| counts.get(&n) == Some(&1)),
            "node {}: {counts:?}",
            h.id()
        );
    }

    // The leader goes while forwarded writes are in flight: it is cut off from both
    // followers, then stopped. Every answer is a retryable one, and nothing is applied
    // twice.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = followers
        .iter()
        .enumerate()
        .map(|(w, f)| {
            let f = f.clone().with_timeout(Duration::from_secs(5));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                let mut n = 1_000_000 * (w as u64 + 1);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    answers.push((n, block_on(f.propose(add(n)))));
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    block_on(on_leader.isolate(followers.iter().map(Handle::id).collect()));
    let old = nodes[l as usize - 1].take().unwrap();
    let stopping = std::thread::spawn(move || old.shutdown());
    // A new leader among the followers serves writes sent to either of them (a generous
    // 20 s: an election on a shared machine).
    let after = wait_for(Duration::from_secs(20), || {
        let l2 = leader(&followers);
        let other = followers.iter().find(|h| h.id() != l2)?;
        block_on(other.propose(add(999_999))).ok()
    });
    assert!(after.is_some(), "no forwarded write after the leader went");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers: Vec<(u64, Result<u64, ProposeError>)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let _ = stopping.join().unwrap();

    let mut retryable = 0;
    for (n, a) in &answers {
        match a {
            Ok(_) => {}
            Err(
                ProposeError::OutcomeUnknown(_)
                | ProposeError::Timeout
                | ProposeError::Busy(_)
                | ProposeError::NotLeader { .. },
            ) => retryable += 1,
            Err(e) => panic!("write {n}: {e:?} is no retryable error"),
        }
    }
    let survivors = applied_on(&followers);
    for (h, adds) in followers.iter().zip(&survivors) {
        let counts = counts(adds);
        for (n, a) in &answers {
            let times = counts.get(n).copied().unwrap_or(0);
            match a {
                Ok(_) => assert_eq!(times, 1, "node {}: acknowledged write {n}", h.id()),
                Err(_) => assert!(
                    times <= 1,
                    "node {}: write {n} applied {times} times",
                    h.id()
                ),
            }
        }
    }
    assert_eq!(
        survivors[0], survivors[1],
        "the survivors applied the same log"
    );
    eprintln!(
        "leader lost mid-flight: {} forwarded writes, {} answered with a retryable error",
        answers.len(),
        retryable
    );
    for node in nodes.into_iter().flatten() {
        node.shutdown().unwrap();
    }
}

/// Snapshot every 30 entries and keep none behind, with small messages: a snapshot goes in
/// many chunks, and a follower that was down must take one.
const SNAPSHOTS: &str =
    "[storage]\nsegment_bytes = 8192\nsnapshot_entries = 30\nsnapshot_keep_entries = 0\n";

#[test]
fn streamed_snapshots_reach_a_lagging_follower_and_survive_a_restart() {
    let setup = Setup::new("host-snapshots", 3);
    let start = |id| start_with(&setup, id, "max_bytes_per_message = 1024\n", SNAPSHOTS);
    let mut nodes: Vec<Option<Host<Counter>>> = (1..=3).map(|id| Some(start(id))).collect();
    let handles = |nodes: &[Option<Host<Counter>>]| -> Vec<Handle<Counter>> {
        nodes.iter().flatten().map(Host::handle).collect()
    };
    add_on_leader(&handles(&nodes), 1);

    // A follower goes down; the others write and compact past it.
    let l = leader(&handles(&nodes));
    let down = (1..=3).find(|&id| id != l).unwrap();
    nodes[down as usize - 1].take().unwrap().shutdown().unwrap();
    let mut expected = 1;
    for n in 1..=400 {
        expected += n;
        add_on_leader(&handles(&nodes), n);
    }

    // Back, it catches up through a snapshot (streamed in chunks of at most 512 bytes)
    // and reads the same total.
    nodes[down as usize - 1] = Some(start(down));
    let back = nodes[down as usize - 1].as_ref().unwrap().handle();
    let caught_up = wait_for(Duration::from_secs(20), || {
        block_on(back.read(ReadMode::ReadIndex, |c: &Counter| (c.total, c.restores)))
            .ok()
            .filter(|&(total, _)| total == expected)
    });
    let Some((_, restores)) = caught_up else {
        let statuses: Vec<_> = nodes
            .iter()
            .flatten()
            .map(|n| (n.is_finished(), block_on(n.handle().status())))
            .collect();
        panic!("the follower did not catch up: {statuses:#?}");
    };
    assert!(restores >= 1, "it caught up without a snapshot");

    // The whole cluster restarts from its snapshots and logs.
    for node in nodes.iter_mut() {
        node.take().unwrap().shutdown().unwrap();
    }
    let nodes: Vec<Host<Counter>> = (1..=3).map(start).collect();
    let hs: Vec<Handle<Counter>> = nodes.iter().map(Host::handle).collect();
    leader(&hs);
    for h in &hs {
        let (total, adds, restores) = block_on(h.read(ReadMode::ReadIndex, |c: &Counter| {
            (c.total, c.adds.len(), c.restores)
        }))
        .unwrap();
        assert_eq!((total, adds), (expected, 401), "node {}", h.id());
        assert!(
            restores >= 1,
            "node {} started without its snapshot",
            h.id()
        );
    }
    for node in nodes {
        node.shutdown().unwrap();
    }
}

/// A state machine that fails (an error, or a panic) on apply stops its node: the
/// proposer of that command learns it, nothing after it is acknowledged, and the node's
/// error says which entry and why.
#[test]
fn a_state_machine_that_fails_stops_the_node_and_acknowledges_nothing_after() {
    for (poison, said) in [
        (&b"fail"[..], "refuses 'fail'"),
        (b"panic", "panics on 'panic'"),
    ] {
        let setup = Setup::new("host-apply-error", 1);
        let mut node = start(&setup, 1);
        let h = node.handle();
        assert_eq!(add_on_leader(std::slice::from_ref(&h), 2), 2);
        // The poison and two commands after it, handed over together.
        let (tx, rx) = smol::channel::unbounded();
        let mut batch = h.batch();
        for command in [poison.to_vec(), add(3), add(4)] {
            let tx = tx.clone();
            batch.propose(command.into(), move |r| {
                let _ = tx.try_send(r);
            });
        }
        block_on(batch.submit());
        let answers: Vec<_> = (0..3).map(|_| block_on(rx.recv()).unwrap()).collect();
        for a in &answers {
            assert!(
                matches!(a, Err(ProposeError::Stopped(m)) if m.contains(said)),
                "{answers:?}"
            );
        }
        match node.join() {
            Err(NodeError::Apply { index, message }) => {
                assert!(index > 1 && message.contains(said), "{index} {message}");
            }
            other => panic!("the node ended with {other:?}"),
        }
        assert!(block_on(h.propose(add(1))).is_err());
        drop(node);

        // Restarted, the node replays its log into the state machine and stops at the
        // same entry again, never past it.
        let mut again = start(&setup, 1);
        assert!(matches!(again.join(), Err(NodeError::Apply { .. })));
    }
}

/// A command larger than `raft.max_entry_bytes` is refused by the handle before it
/// reaches the node; one of exactly the limit is applied.
#[test]
fn a_command_over_the_limit_is_refused_before_the_log() {
    let setup = Setup::new("host-too-large", 1);
    let node = start_with(&setup, 1, "max_entry_bytes = 64\n", "");
    let h = node.handle();
    add_on_leader(std::slice::from_ref(&h), 1);
    match block_on(h.propose(vec![0u8; 65])) {
        Err(ProposeError::TooLarge { len: 65, max }) => assert!(max < 65),
        other => panic!("{other:?}"),
    }
    node.shutdown().unwrap();
}

/// Membership through the handle: node 4 is added as a learner (its address replicated),
/// then one joint-consensus change makes it a voter and a follower a learner at once;
/// node 4 then reads every write, and leadership is handed to it.
#[test]
fn members_change_jointly_through_the_handle_and_leadership_moves() {
    let setup = Setup::new("host-members", 4);
    let config = |id: u64| {
        let text = format!("voters = [1, 2, 3]\n{}", setup.config_text(id));
        NodeConfig::parse(&text, setup.path()).unwrap()
    };
    let nodes: Vec<Host<Counter>> = (1..=4)
        .map(|id| Host::start(&config(id), Counter::default()).unwrap())
        .collect();
    let handles: Vec<Handle<Counter>> = nodes.iter().map(Host::handle).collect();
    add_on_leader(&handles[..3], 1);
    let l = leader(&handles[..3]);
    let on_leader = |f: &dyn Fn(&Handle<Counter>) -> Option<Index>| {
        wait_for(Duration::from_secs(20), || {
            let l = leader(&handles[..3]);
            f(handles.iter().find(|h| h.id() == l)?)
        })
    };
    let added = on_leader(&|h| block_on(h.add_learner(4, setup.addrs[3])).ok());
    assert!(added.is_some(), "node 4 was not added");

    // Joint consensus: 4 becomes a voter and a follower a learner, in one change.
    let demoted = (1..=3).find(|&id| id != l).unwrap();
    let voters: Vec<NodeId> = (1..=4).filter(|&id| id != demoted).collect();
    let joint = on_leader(&|h| block_on(h.set_members(&voters, &[demoted])).ok());
    assert!(joint.is_some(), "the joint change was refused");
    let settled = wait_for(Duration::from_secs(20), || {
        let status = block_on(handles[l as usize - 1].status())?;
        let mut v: Vec<NodeId> = status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        v.sort_unstable();
        let learner = status.members.iter().any(|m| m.id == demoted && !m.voter);
        (v == voters && learner).then_some(status)
    });
    assert!(settled.is_some(), "the configuration did not settle");
    let four = &handles[3];
    let total = add_on_leader(&handles, 10);
    let read = wait_for(Duration::from_secs(20), || {
        block_on(four.read(ReadMode::ReadIndex, |c: &Counter| c.total)).ok()
    });
    assert_eq!(read, Some(total));

    // Leadership moves to node 4 on request.
    let moved = wait_for(Duration::from_secs(20), || {
        let l = leader(&handles);
        if l == 4 {
            return Some(());
        }
        let _ = block_on(handles[l as usize - 1].transfer_leadership(4));
        std::thread::sleep(Duration::from_millis(100));
        None
    });
    assert!(moved.is_some(), "leadership did not move to node 4");
    for node in nodes {
        node.shutdown().unwrap();
    }
}

/// A leader asked to stop hands leadership over before it exits: its own last status (the
/// watch keeps the newest) is no longer that of a leader, in a newer term. A leader that
/// simply exited would end as the leader, and the others would elect one an election
/// timeout later. Prints how long writes were unavailable.
#[test]
fn a_leader_asked_to_stop_hands_leadership_over_first() {
    let setup = Setup::new("host-handover", 3);
    let mut nodes: Vec<Option<Host<Counter>>> = (1..=3).map(|id| Some(start(&setup, id))).collect();
    let handles: Vec<Handle<Counter>> = nodes.iter().flatten().map(Host::handle).collect();
    add_on_leader(&handles, 1);
    let l = leader(&handles);
    let old = block_on(handles[l as usize - 1].status()).unwrap();
    assert_eq!(old.role, Role::Leader);
    let watch = handles[l as usize - 1].watch();

    // A writer goes on meanwhile, following the leader: the longest gap between two of its
    // acknowledged writes is how long the cluster could not write.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let handles: Vec<Handle<Counter>> = handles
            .iter()
            .map(|h| h.clone().with_timeout(Duration::from_secs(1)))
            .collect();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut to = l;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match block_on(handles[to as usize - 1].propose(add(1))) {
                    Ok(_) => acked.push(std::time::Instant::now()),
                    Err(ProposeError::NotLeader {
                        leader: Some(next), ..
                    }) => to = next,
                    Err(_) => to = to % 3 + 1,
                }
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    let began = std::time::Instant::now();
    nodes[l as usize - 1].take().unwrap().shutdown().unwrap();
    let stopped = began.elapsed();
    let mut last = None;
    while let Ok(s) = watch.try_recv() {
        last = Some(s);
    }
    let last = last.expect("the stopping leader published its status");
    assert_ne!(last.role, Role::Leader, "it exited as the leader: {last:?}");
    assert!(last.term > old.term, "{last:?}");

    let others: Vec<Handle<Counter>> = handles.iter().filter(|h| h.id() != l).cloned().collect();
    add_on_leader(&others, 1);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().unwrap();
    let gap = acked
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "hand-over: shutdown returned after {stopped:?}; {} writes acknowledged around it; the longest gap between two: {gap:?}",
        acked.len()
    );
    for node in nodes.into_iter().flatten() {
        node.shutdown().unwrap();
    }
}

/// Proposals made on a leader while it hands leadership over are held, not refused as
/// "busy": once the old leader follows the new one, it forwards them there, and each is
/// applied once (before, every one was refused with "leadership transfer under way" and
/// the caller had to pause and retry).
#[test]
fn proposals_during_a_leadership_transfer_are_held_and_applied_by_the_new_leader() {
    let setup = Setup::new("host-held", 3);
    let nodes: Vec<Host<Counter>> = (1..=3).map(|id| start(&setup, id)).collect();
    let handles: Vec<Handle<Counter>> = nodes.iter().map(Host::handle).collect();
    let before = add_on_leader(&handles, 1);
    let l = leader(&handles);
    let target = (1..=3).find(|&id| id != l).unwrap();
    let on_leader = handles[l as usize - 1].clone();
    let answers = block_on(async {
        on_leader.transfer_leadership(target).await.unwrap();
        // Made at once: the transfer needs a round trip and a vote at least.
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let h = on_leader.clone();
                smol::spawn(async move { h.propose(add(10)).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await);
        }
        answers
    });
    for answer in &answers {
        assert!(
            answer.is_ok(),
            "a proposal made during the transfer: {answers:?}"
        );
    }
    assert_eq!(leader(&handles), target, "leadership moved");
    let total = add_on_leader(&handles, 1);
    assert_eq!(
        total,
        before + 5 * 10 + 1,
        "each held proposal applied once"
    );
    for node in nodes {
        node.shutdown().unwrap();
    }
}

/// Snapshots that fail (the state machine refuses to begin one, or its view breaks
/// half-way) are given up and tried again later: the node goes on applying and answering,
/// and once the state machine heals, a snapshot is saved.
#[test]
fn failing_snapshots_are_given_up_and_the_node_goes_on() {
    let setup = Setup::new("host-snapshot-faults", 1);
    let node = start_with(&setup, 1, "", "[storage]\nsnapshot_entries = 10\n");
    let h = node.handle();
    let last_snapshot = || block_on(h.status()).unwrap().snapshot.last;
    add_on_leader(std::slice::from_ref(&h), 1);
    for fault in [&b"refuse"[..], b"break"] {
        block_on(h.propose(fault.to_vec())).unwrap();
        let before = last_snapshot();
        let mut expected = block_on(h.read(ReadMode::ReadIndex, |c: &Counter| c.total)).unwrap();
        for n in 1..=60 {
            expected += n;
            assert_eq!(block_on(h.propose(add(n))), Ok(expected));
        }
        assert_eq!(
            last_snapshot(),
            before,
            "a snapshot was saved despite {fault:?}"
        );
        block_on(h.propose(b"heal".to_vec())).unwrap();
        let saved = wait_for(Duration::from_secs(20), || {
            block_on(h.propose(add(0))).unwrap();
            (last_snapshot() > before).then_some(())
        });
        assert!(saved.is_some(), "no snapshot after healing from {fault:?}");
    }
    assert!(!node.is_finished());
    node.shutdown().unwrap();
}

/// `Handle::snapshot` makes the node keep a snapshot holding every entry applied when it
/// was asked (taken then, or the kept one reused), and `Handle::open_snapshot` reads it back
/// from the file; a snapshot that cannot be taken is reported to the caller, who is not
/// left waiting.
#[test]
fn a_snapshot_asked_for_holds_every_applied_entry_and_reads_back() {
    let setup = Setup::new("host-snapshot-asked", 3);
    let nodes: Vec<Host<Counter>> = (1..=3).map(|id| start(&setup, id)).collect();
    let handles: Vec<Handle<Counter>> = nodes.iter().map(Host::handle).collect();
    for n in 1..=10 {
        add_on_leader(&handles, n);
    }
    let l = leader(&handles);
    let h = handles.iter().find(|h| h.id() == l).unwrap();
    // None kept yet (the default interval is far away).
    assert!(h.open_snapshot().unwrap().is_none());
    let applied = block_on(h.status()).unwrap().applied;
    let index = block_on(h.snapshot()).unwrap();
    assert!(index >= applied, "snapshot at {index}, applied {applied}");
    let mut kept = h.open_snapshot().unwrap().unwrap();
    assert_eq!(kept.index(), index);
    let mut state = Vec::new();
    kept.read_to_end(&mut state).unwrap();
    assert_eq!(kept.remaining(), 0);
    assert_eq!(
        &state[..16],
        &[55u64.to_le_bytes(), 10u64.to_le_bytes()].concat()[..]
    );
    // Nothing applied since: the kept one is reused.
    assert_eq!(block_on(h.snapshot()).unwrap(), index);
    // A state machine that cannot snapshot: the caller is told, then it works again.
    add_on_leader(&handles, 0);
    block_on(h.propose(b"refuse".to_vec())).unwrap();
    let refused = block_on(h.snapshot());
    assert!(
        matches!(refused, Err(SnapshotRequestError::Failed(_))),
        "{refused:?}"
    );
    block_on(h.propose(b"heal".to_vec())).unwrap();
    let later = block_on(h.snapshot()).unwrap();
    assert!(later > index);
    for node in nodes {
        node.shutdown().unwrap();
    }
}
