//! The same cluster, run once on smol and once on tokio (`rt::Runtime`): one test body each
//! for the host API and for the KV store with its client, run by a `#[test]` per runtime.
//! 3 nodes over QUIC on 127.0.0.1 propose (on the leader and forwarded from a follower),
//! read linearizably, add a fourth node as a learner and promote it, lose their leader to a
//! shutdown and go on under the next; the metrics endpoint answers a scrape and refuses
//! garbage. The state machine records on which runtime it applied, so a node that ran on
//! the wrong executor fails the test.
//!
//! The tokio variants are built by `cargo test --workspace`: the crate's dev-dependency on
//! itself turns the `tokio` feature on for its tests.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::scrape::{exchange, parse, scrape_raw};
use common::Setup;
use coracle::{Index, NodeId};
use coracle_quic::client::{Client, ClientError};
use coracle_quic::config::NodeConfig;
use coracle_quic::host::{
    ApplyError, Handle, Host, NodeError, ReadMode, ResponseCodec, RestoreError, SnapshotError,
    StateMachine,
};
use coracle_quic::rt::{Runtime, RuntimeError};
use coracle_quic::server::RunningNode;
use std::future::Future;
use std::io::Read;
use std::time::{Duration, Instant};

/// A counter that remembers whether its last apply ran inside a tokio runtime.
#[derive(Default)]
struct Counter {
    total: u64,
    on_tokio: Option<bool>,
}

impl StateMachine for Counter {
    type Response = u64;
    type Snapshot = Vec<u8>;

    fn apply(&mut self, _index: Index, command: &[u8]) -> Result<u64, ApplyError> {
        self.total += u64::from_le_bytes(command.try_into().unwrap_or([0; 8]));
        self.on_tokio = Some(tokio::runtime::Handle::try_current().is_ok());
        Ok(self.total)
    }

    fn snapshot(&mut self, _applied: Index) -> Result<Vec<u8>, SnapshotError> {
        Ok(self.total.to_le_bytes().to_vec())
    }

    fn restore(&mut self, _index: Index, source: &mut dyn Read) -> Result<(), RestoreError> {
        let mut word = [0; 8];
        source.read_exact(&mut word).map_err(RestoreError::Io)?;
        self.total = u64::from_le_bytes(word);
        Ok(())
    }

    /// A follower forwards proposals to the leader.
    fn response_codec() -> Option<ResponseCodec<u64>> {
        Some(ResponseCodec {
            encode: |total| total.to_le_bytes().to_vec(),
            decode: |b| Some(u64::from_le_bytes(b.try_into().ok()?)),
        })
    }
}

/// Runs `body` to completion on `runtime`: on a tokio runtime of its own (2 workers; the
/// body runs on the test thread, the nodes on the workers), or with smol.
fn run_on<F: Future<Output = ()>>(runtime: &str, body: impl FnOnce(Runtime) -> F) {
    match runtime {
        "tokio" => {
            let tokio = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            tokio.block_on(body(Runtime::Tokio(tokio.handle().clone())));
        }
        _ => smol::block_on(body(Runtime::Smol)),
    }
}

/// Sleeps on `runtime`'s own timers.
async fn pause(runtime: &Runtime, ms: u64) {
    let d = Duration::from_millis(ms);
    match runtime {
        Runtime::Tokio(_) => tokio::time::sleep(d).await,
        _ => {
            smol::Timer::after(d).await;
        }
    }
}

/// Polls `f` every 20 ms until it gives a value, for `limit` at most (generous: elections
/// and reconnections on a shared, loaded machine).
async fn until<T, F: Future<Output = Option<T>>>(
    runtime: &Runtime,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(t) = f().await {
            return Some(t);
        }
        if Instant::now() > end {
            return None;
        }
        pause(runtime, 20).await;
    }
}

const LIMIT: Duration = Duration::from_secs(20);

/// The leader `handles` agree on.
async fn leader(runtime: &Runtime, handles: &[Handle<Counter>]) -> NodeId {
    until(runtime, LIMIT, || async {
        let mut leaders = Vec::new();
        for h in handles {
            leaders.push(h.status().await.and_then(|s| s.leader));
        }
        let first = leaders[0]?;
        leaders.iter().all(|l| *l == Some(first)).then_some(first)
    })
    .await
    .expect("a leader")
}

fn add(n: u64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

/// Node `id`'s configuration: voters 1-3, node 1 serving metrics.
fn config(setup: &Setup, id: u64) -> NodeConfig {
    let mut text = format!("voters = [1, 2, 3]\n{}", setup.config_text(id));
    if id == 1 {
        text += "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    }
    NodeConfig::parse(&text, setup.path()).unwrap()
}

/// The host API on `runtime`: propose, forward, read, metrics, membership, failover.
async fn host_cluster(runtime: Runtime) {
    let tokio = matches!(runtime, Runtime::Tokio(_));
    let setup = Setup::new(&format!("runtimes-host-{}", runtime.name()), 4);
    let mut nodes: Vec<Option<Host<Counter>>> = (1..=3)
        .map(|id| {
            Some(
                Host::start_on(
                    runtime.clone(),
                    &config(&setup, id),
                    Counter::default(),
                    None,
                )
                .unwrap(),
            )
        })
        .collect();
    let handles: Vec<Handle<Counter>> = nodes.iter().flatten().map(Host::handle).collect();

    // Proposals on the leader, then on a follower (forwarded to the leader).
    let mut expected = 0;
    for n in 1..=10 {
        expected += n;
        let total = until(&runtime, LIMIT, || async {
            let l = leader(&runtime, &handles).await;
            handles[l as usize - 1].propose(add(n)).await.ok()
        })
        .await;
        assert_eq!(total, Some(expected));
    }
    let l = leader(&runtime, &handles).await;
    let follower = handles.iter().find(|h| h.id() != l).unwrap();
    expected += 100;
    let forwarded = until(&runtime, LIMIT, || async {
        follower.propose(add(100)).await.ok()
    })
    .await;
    assert_eq!(
        forwarded,
        Some(expected),
        "a follower's proposal, forwarded"
    );

    // Linearizable reads on every node; every apply ran on the runtime asked for.
    for h in &handles {
        let (total, on_tokio) = h
            .read(ReadMode::ReadIndex, |c: &Counter| (c.total, c.on_tokio))
            .await
            .unwrap();
        assert_eq!(total, expected, "node {}", h.id());
        assert_eq!(
            on_tokio,
            Some(tokio),
            "node {} applied on the wrong runtime",
            h.id()
        );
    }

    // The metrics endpoint runs on the same runtime: a scrape, and garbage refused.
    let metrics = nodes[0].as_ref().unwrap().metrics_addr().unwrap();
    let (code, _, body) = scrape_raw(metrics).expect("a scrape is answered");
    assert_eq!(code, 200);
    let samples = parse(&body).unwrap();
    assert!(
        samples.keys().any(|k| k.starts_with("coracle_term")),
        "{body}"
    );
    let garbage = exchange(metrics, b"\x00\xff not http at all\r\n\r\n");
    assert!(
        garbage.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&garbage)
    );

    // Membership: node 4 joins as a learner, is promoted, and reads what was written.
    nodes.push(Some(
        Host::start_on(
            runtime.clone(),
            &config(&setup, 4),
            Counter::default(),
            None,
        )
        .unwrap(),
    ));
    let four = nodes[3].as_ref().unwrap().handle();
    let all: Vec<Handle<Counter>> = handles.iter().cloned().chain([four.clone()]).collect();
    let on_leader = |op: &'static str| {
        let (runtime, handles, addr) = (&runtime, &handles, setup.addrs[3]);
        until(runtime, LIMIT, move || async move {
            let h = &handles[leader(runtime, handles).await as usize - 1];
            let done = match op {
                "add" => h.add_learner(4, addr).await,
                _ => h.promote(4).await,
            };
            match done {
                Ok(_) => Some(()),
                // An answer lost to a change of leader may have been committed all the
                // same (a retry is then refused as done already): the status tells.
                Err(e) => {
                    let members = h.status().await?.members;
                    let four = members.iter().find(|m| m.id == 4);
                    let settled = four.is_some_and(|m| op == "add" || m.voter);
                    settled.then_some(()).or_else(|| {
                        eprintln!("{op} on node {}: {e}", h.id());
                        None
                    })
                }
            }
        })
    };
    assert!(on_leader("add").await.is_some(), "node 4 was not added");
    assert!(
        on_leader("promote").await.is_some(),
        "node 4 was not promoted"
    );
    let voters = until(&runtime, LIMIT, || async {
        let s = all[leader(&runtime, &handles).await as usize - 1]
            .status()
            .await?;
        (s.members.iter().filter(|m| m.voter).count() == 4).then_some(())
    })
    .await;
    assert!(voters.is_some(), "node 4 is not a voter");
    let read = until(&runtime, LIMIT, || async {
        four.read(ReadMode::ReadIndex, |c: &Counter| c.total)
            .await
            .ok()
    })
    .await;
    assert_eq!(read, Some(expected));

    // The leader shuts down (handing over first); the others go on under a new leader.
    let old = leader(&runtime, &all).await;
    nodes[old as usize - 1]
        .take()
        .unwrap()
        .stop()
        .await
        .unwrap();
    let rest: Vec<Handle<Counter>> = all.iter().filter(|h| h.id() != old).cloned().collect();
    expected += 7;
    let total = until(&runtime, LIMIT, || async {
        let l = leader(&runtime, &rest).await;
        rest.iter()
            .find(|h| h.id() == l)?
            .propose(add(7))
            .await
            .ok()
    })
    .await;
    assert_eq!(total, Some(expected), "a write after the leader left");
    assert_ne!(leader(&runtime, &rest).await, old);
    for h in &rest {
        let total = until(&runtime, LIMIT, || async {
            h.read(ReadMode::ReadIndex, |c: &Counter| c.total)
                .await
                .ok()
        })
        .await;
        assert_eq!(total, Some(expected), "node {}", h.id());
    }
    for node in nodes.into_iter().flatten() {
        node.stop().await.unwrap();
    }
}

/// The KV store and its client on `runtime`: writes and linearizable reads through a
/// client that follows the leader, across the leader's shutdown.
async fn kv_cluster(runtime: Runtime) {
    let setup = Setup::new(&format!("runtimes-kv-{}", runtime.name()), 3);
    let mut nodes: Vec<Option<RunningNode>> = (1..=3)
        .map(|id| Some(RunningNode::start_on(runtime.clone(), &setup.config(id)).unwrap()))
        .collect();
    let client = Client::new_on(
        &setup.creds("client-alice"),
        setup.addrs.clone(),
        runtime.clone(),
    )
    .unwrap()
    .with_timeout(LIMIT)
    .with_attempt_timeout(Duration::from_secs(1));
    for i in 0..20 {
        client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    assert_eq!(client.get("k7").await.unwrap(), Some(b"v7".to_vec()));

    let statuses = client.statuses(&setup.addrs).await;
    let old = statuses
        .iter()
        .flatten()
        .find_map(|s| s.leader)
        .expect("a node names the leader");
    nodes[old as usize - 1]
        .take()
        .unwrap()
        .stop()
        .await
        .unwrap();
    client.put("after", "failover").await.unwrap();
    assert_eq!(
        client.get("after").await.unwrap(),
        Some(b"failover".to_vec())
    );
    assert_eq!(client.get("k19").await.unwrap(), Some(b"v19".to_vec()));
    client.close();
    for node in nodes.into_iter().flatten() {
        node.stop().await.unwrap();
    }
}

#[test]
fn a_cluster_on_smol_proposes_reads_changes_members_and_fails_over() {
    run_on("smol", host_cluster);
}

#[test]
fn a_cluster_on_tokio_proposes_reads_changes_members_and_fails_over() {
    run_on("tokio", host_cluster);
}

#[test]
fn the_kv_store_and_its_client_on_smol() {
    run_on("smol", kv_cluster);
}

#[test]
fn the_kv_store_and_its_client_on_tokio() {
    run_on("tokio", kv_cluster);
}

fn tokio_runtime(io: bool, time: bool) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(1);
    if io {
        b.enable_io();
    }
    if time {
        b.enable_time();
    }
    b.build().unwrap()
}

/// A tokio runtime built without its I/O or time driver is refused with an error that says
/// what to enable, by nodes and clients alike (tokio would panic on first use).
#[test]
fn a_tokio_runtime_without_io_or_timers_is_refused_with_what_to_enable() {
    let setup = Setup::new("runtimes-drivers", 1);
    for (io, time, missing) in [
        (true, false, RuntimeError::NoTimers),
        (false, true, RuntimeError::NoIo),
    ] {
        let tokio = tokio_runtime(io, time);
        let runtime = Runtime::Tokio(tokio.handle().clone());
        match Host::start_on(runtime.clone(), &setup.config(1), Counter::default(), None) {
            Err(NodeError::Runtime(e)) => {
                assert_eq!(e, missing);
                assert!(e.to_string().contains("enable_all()"), "{e}");
            }
            other => panic!("a runtime without {missing:?} gave {other:?}"),
        }
        match Client::new_on(&setup.creds("client-alice"), setup.addrs.clone(), runtime) {
            Err(ClientError::Runtime(e)) => assert_eq!(e, missing),
            other => panic!("a client on a runtime without {missing:?} gave {other:?}"),
        }
    }
}

/// On a current-thread tokio runtime (`#[tokio::test]`'s), blocking until the node stops
/// would wait forever: `join` says so at once, `stop().await` stops it, and dropping a
/// running node there returns (the node stops in the background).
#[test]
fn on_a_current_thread_tokio_runtime_join_refuses_to_block_and_stop_awaits() {
    let setup = Setup::new("runtimes-current-thread", 1);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let runtime = Runtime::tokio_current();
        let mut node =
            Host::start_on(runtime.clone(), &setup.config(1), Counter::default(), None).unwrap();
        let h = node.handle();
        let total = until(&runtime, LIMIT, || async { h.propose(add(3)).await.ok() }).await;
        assert_eq!(total, Some(3));
        assert!(matches!(
            node.join(),
            Err(NodeError::Runtime(RuntimeError::WouldBlock))
        ));
        node.stop().await.unwrap();
        // The same directory again, dropped while it runs.
        let again = until(&runtime, LIMIT, || async {
            Host::start_on(runtime.clone(), &setup.config(1), Counter::default(), None).ok()
        })
        .await
        .expect("the node starts again");
        drop(again);
    });
}

/// A node whose tokio runtime shut down under it: `join` answers that, instead of waiting
/// for a task that will never end.
#[test]
fn a_node_whose_tokio_runtime_shut_down_is_reported_as_such() {
    let setup = Setup::new("runtimes-shut-down", 1);
    let tokio = tokio_runtime(true, true);
    let mut node = Host::start_on(
        Runtime::Tokio(tokio.handle().clone()),
        &setup.config(1),
        Counter::default(),
        None,
    )
    .unwrap();
    drop(tokio);
    assert!(matches!(
        node.join(),
        Err(NodeError::Runtime(RuntimeError::ShutDown))
    ));
}
