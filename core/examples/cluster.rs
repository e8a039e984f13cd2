//! A 3-node Coracle cluster in one process: an in-memory network that delays every message
//! by one or two ticks, a tick loop, and a tiny key-value state machine per node.
//!
//! The story: a leader is elected, writes commit on every node, the leader crashes, the
//! survivors elect a new one and keep committing, the crashed node restarts from its log
//! and catches up. It exits with 0 only if every step happened as expected.
//!
//! Run it with `cargo run -p coracle --example cluster [-- --seed N]`.

use coracle::{Config, EntryKind, Index, Node, NodeId, Output, OwnedMessage, Role, Term, VecLog};
use std::fmt::Display;
use std::process::ExitCode;

const MEMBERS: [NodeId; 3] = [1, 2, 3];

/// One server: its Raft node (`None` while crashed), its log "on disk" while it is down,
/// and its state machine: the commands it applied, in order.
struct Server {
    id: NodeId,
    node: Option<Node<VecLog>>,
    disk: Option<VecLog>,
    applied: Vec<(Index, String)>,
}

/// A write a client made, and whether it was seen committed on every live node.
struct Write {
    text: String,
    index: Index,
    done: bool,
}

struct Cluster {
    now: u64,
    seed: u64,
    rng: u64,
    servers: Vec<Server>,
    /// Messages on the wire: (tick of delivery, from, to, message).
    network: Vec<(u64, NodeId, NodeId, OwnedMessage)>,
    delivered: u64,
    writes: Vec<Write>,
}

fn say(now: u64, text: impl Display) {
    println!("[t={now:>4}] {text}");
}

impl Cluster {
    fn new(seed: u64) -> Self {
        let mut cluster = Cluster {
            now: 0,
            seed,
            rng: seed,
            servers: Vec::new(),
            network: Vec::new(),
            delivered: 0,
            writes: Vec::new(),
        };
        for id in MEMBERS {
            let node = cluster.boot(id, VecLog::new());
            cluster.servers.push(Server {
                id,
                node: Some(node),
                disk: None,
                applied: Vec::new(),
            });
        }
        cluster
    }

    /// A node on `log`. Its seed (election jitter) derives from the cluster's seed.
    fn boot(&self, id: NodeId, log: VecLog) -> Node<VecLog> {
        let mut config = Config::new(id, self.seed.wrapping_mul(1000).wrapping_add(id));
        config.election_ticks = std::env::var("ET").map(|v| v.parse().unwrap()).unwrap_or(10);
        Node::new(config, log, &MEMBERS).expect("valid configuration")
    }

    /// SplitMix64: the network's delays.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// One tick: deliver the messages due, advance every node's clock, drain the outputs.
    fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        let (due, later) = self.network.drain(..).partition(|m| m.0 <= now);
        self.network = later;
        for (_, from, to, message) in due {
            // A crashed node receives nothing: the message is lost.
            if let Some(node) = self.servers[to as usize - 1].node.as_mut() {
                node.step(from, message.as_message());
                self.delivered += 1;
            }
        }
        for server in &mut self.servers {
            if let Some(node) = server.node.as_mut() {
                node.tick();
            }
        }
        self.drain();
    }

    /// The run loop of the node's docs: drain every output until none is left.
    fn drain(&mut self) {
        for i in 0..self.servers.len() {
            let Some(mut node) = self.servers[i].node.take() else {
                continue;
            };
            let id = node.id();
            while let Some(output) = node.poll_output() {
                match output {
                    Output::StateChanged(s) => match (s.role, s.leader) {
                        (Role::Leader, _) => {
                            say(self.now, format!("node {id} is leader of term {}", s.term))
                        }
                        (Role::Candidate, _) => {
                            say(self.now, format!("node {id} campaigns in term {}", s.term))
                        }
                        (Role::Follower, Some(l)) => say(
                            self.now,
                            format!("node {id} follows leader {l} in term {}", s.term),
                        ),
                        _ => {}
                    },
                    // Memory is "durable" at once; a real host flushes its disk here.
                    Output::Sync(token) => node.synced(token),
                    Output::Send { to, message } => {
                        let at = self.now + 1 + self.random() % std::env::var("DL").map(|v| v.parse().unwrap()).unwrap_or(2);
                        self.network
                            .push((at, id, to, OwnedMessage::from(&message)));
                    }
                    Output::Apply(e) if e.kind == EntryKind::Command => {
                        let text = String::from_utf8_lossy(e.data).into_owned();
                        self.servers[i].applied.push((e.index, text));
                    }
                    Output::Apply(_) => {} // a new leader's no-op
                }
            }
            self.servers[i].node = Some(node);
        }
        self.report_writes();
    }

    /// Announces each write once every live node has applied it.
    fn report_writes(&mut self) {
        let live: Vec<&Server> = self.servers.iter().filter(|s| s.node.is_some()).collect();
        for w in self.writes.iter_mut().filter(|w| !w.done) {
            if live
                .iter()
                .all(|s| s.applied.iter().any(|(i, t)| *i == w.index && *t == w.text))
            {
                w.done = true;
                let on = if live.len() == MEMBERS.len() {
                    "all nodes".to_string()
                } else {
                    let ids: Vec<String> = live.iter().map(|s| s.id.to_string()).collect();
                    format!("nodes {}", ids.join(" and "))
                };
                say(
                    self.now,
                    format!("write {:?} committed at index {} on {on}", w.text, w.index),
                );
            }
        }
    }

    /// The live leader of the highest term, with its term.
    fn leader(&self) -> Option<(NodeId, Term)> {
        let nodes = self.servers.iter().filter_map(|s| s.node.as_ref());
        nodes
            .filter(|n| n.role() == Role::Leader)
            .map(|n| (n.id(), n.term()))
            .max_by_key(|l| l.1)
    }

    /// A client writes `text` through the leader.
    fn write(&mut self, text: &str) {
        let Some((id, _)) = self.leader() else {
            return say(self.now, format!("write {text:?} refused: no leader"));
        };
        let node = self.servers[id as usize - 1]
            .node
            .as_mut()
            .expect("the leader is live");
        match node.propose(text.as_bytes()) {
            Ok(p) => {
                say(
                    self.now,
                    format!(
                        "client writes {text:?} through leader {id} (index {})",
                        p.index
                    ),
                );
                self.writes.push(Write {
                    text: text.to_string(),
                    index: p.index,
                    done: false,
                });
            }
            Err(e) => say(self.now, format!("write {text:?} refused: {e}")),
        }
        self.drain();
    }

    /// Ticks until `done` gives an answer, for at most `limit` ticks.
    fn run_until<T>(&mut self, limit: u64, done: impl Fn(&Self) -> Option<T>) -> Option<T> {
        for _ in 0..limit {
            if let Some(answer) = done(self) {
                return Some(answer);
            }
            self.tick();
        }
        done(self)
    }

    fn all_writes_done(&self) -> bool {
        self.writes.iter().all(|w| w.done)
    }

    /// Writes each command, one tick apart, and waits until all of them committed.
    fn write_all(&mut self, texts: &[&str]) -> bool {
        for text in texts {
            self.write(text);
            self.tick();
        }
        self.run_until(50, |c| c.all_writes_done().then_some(()))
            .is_some()
    }

    /// The node loses its memory; its log survives on "disk".
    fn crash(&mut self, id: NodeId) {
        let server = &mut self.servers[id as usize - 1];
        let node = server.node.take().expect("the node is up");
        let log = node.log().clone();
        say(
            self.now,
            format!(
                "node {id} crashes; its log (last index {}) survives on disk",
                node.last_index()
            ),
        );
        server.disk = Some(log);
        server.applied.clear();
    }

    /// The node restarts from its log and replays it into a fresh state machine.
    fn restart(&mut self, id: NodeId) {
        let log = self.servers[id as usize - 1]
            .disk
            .take()
            .expect("the node is down");
        let node = self.boot(id, log);
        say(
            self.now,
            format!(
                "node {id} restarts from its log (last index {})",
                node.last_index()
            ),
        );
        self.servers[id as usize - 1].node = Some(node);
    }

    /// The state machine of node `id`, as `key=value` pairs in key order.
    fn state(&self, id: NodeId) -> String {
        let mut kv = std::collections::BTreeMap::new();
        for (_, text) in &self.servers[id as usize - 1].applied {
            let (k, v) = text.split_once('=').unwrap_or((text, ""));
            kv.insert(k, v);
        }
        kv.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let seed = match args.iter().position(|a| a == "--seed") {
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .expect("--seed takes a number"),
        None => 1,
    };
    println!("Coracle: 3 nodes in one process, messages delayed 1-2 ticks, seed {seed}\n");
    let mut c = Cluster::new(seed);
    let mut checks: Vec<(String, bool)> = Vec::new();

    let first = c.run_until(100, Cluster::leader);
    checks.push((format!("a leader is elected: {first:?}"), first.is_some()));
    let committed = first.is_some() && c.write_all(&["x=1", "y=2", "z=3"]);
    checks.push(("3 writes committed on all nodes".into(), committed));

    let (old, old_term) = first.unwrap_or((1, 0));
    c.crash(old);
    let second = c.run_until(100, |c| {
        c.leader().filter(|&(id, t)| id != old && t > old_term)
    });
    checks.push((
        format!("the survivors elect a new leader: {second:?}"),
        second.is_some(),
    ));
    let committed = second.is_some() && c.write_all(&["x=4", "w=5"]);
    checks.push(("2 writes committed by the new leader".into(), committed));

    c.restart(old);
    c.write_all(&["v=6"]);
    let caught_up = c.run_until(100, |c| {
        let applied = |s: &Server| s.applied.clone();
        let all = c.servers.iter().map(applied).collect::<Vec<_>>();
        (c.all_writes_done() && all.iter().all(|a| *a == all[0] && a.len() == 6)).then_some(())
    });
    if caught_up.is_some() {
        say(
            c.now,
            format!("node {old} caught up: same 6 writes applied as the others"),
        );
    }
    checks.push((
        format!("node {old} restarts and catches up"),
        caught_up.is_some(),
    ));

    println!(
        "\nSummary after {} ticks, {} messages delivered:",
        c.now, c.delivered
    );
    for id in MEMBERS {
        println!("  node {id}: {}", c.state(id));
    }
    for (what, ok) in &checks {
        println!("  [{}] {what}", if *ok { " ok " } else { "FAIL" });
    }
    if checks.iter().all(|c| c.1) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
