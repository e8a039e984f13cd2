//! A 3-node Coracle cluster in one process: an in-memory network where every message takes
//! one tick, a tick loop, and on each node a state machine that records the commands it
//! applies.
//!
//! The story: a leader is elected, writes commit on every node, the leader crashes, the
//! survivors elect a new one and keep committing, the crashed node restarts from its log
//! and catches up. It exits with 0 only if every step happened as expected.
//!
//! Run it with `cargo run -p coracle --example cluster [-- --seed N]`: the seed drives the
//! nodes' election jitter, and a seed replays exactly.

use coracle::{Config, EntryKind, Index, Node, NodeId, Output, OwnedMessage, Role, StateChange};
use coracle::{Term, VecLog};
use std::process::ExitCode;

const MEMBERS: [NodeId; 3] = [1, 2, 3];

/// `say!(tick; "format", args...)` prints one line of the story, stamped with the tick.
macro_rules! say {
    ($now:expr; $($arg:tt)*) => { println!("[t={:>4}] {}", $now, format_args!($($arg)*)) };
}

/// One server: its Raft node (`None` while crashed), its log "on disk" while it is down,
/// and its state machine: the commands it applied, in order.
#[derive(Default)]
struct Server {
    node: Option<Node<VecLog>>,
    disk: Option<VecLog>,
    applied: Vec<(Index, String)>,
}

/// A write a client made: the entry it became; `done` once every live node applied it.
struct Write {
    entry: (Index, String),
    done: bool,
}

#[derive(Default)]
struct Cluster {
    now: u64,
    seed: u64,
    servers: Vec<Server>,
    /// Messages sent during this tick, delivered at the next: (from, to, message).
    network: Vec<(NodeId, NodeId, OwnedMessage)>,
    writes: Vec<Write>,
    /// The expectations checked so far, and whether each held.
    checks: Vec<(&'static str, bool)>,
}

impl Cluster {
    fn new(seed: u64) -> Self {
        let mut c = Cluster {
            seed,
            ..Cluster::default()
        };
        for id in MEMBERS {
            c.servers.push(Server::default());
            c.server(id).node = Some(c.boot(id, VecLog::new()));
        }
        c
    }

    /// A node on `log`, with its seed (election jitter) derived from the cluster's seed.
    fn boot(&self, id: NodeId, log: VecLog) -> Node<VecLog> {
        let config = Config::new(id, self.seed.wrapping_mul(1000).wrapping_add(id));
        Node::new(config, log, &MEMBERS).expect("valid configuration")
    }

    fn server(&mut self, id: NodeId) -> &mut Server {
        &mut self.servers[id as usize - 1]
    }

    /// One tick: deliver the messages sent during the last one, advance every node's clock,
    /// then drain every node's outputs.
    fn tick(&mut self) {
        self.now += 1;
        for (from, to, message) in std::mem::take(&mut self.network) {
            // A crashed node receives nothing: the message is lost.
            if let Some(node) = self.server(to).node.as_mut() {
                node.step(from, message.as_message());
            }
        }
        for node in self.servers.iter_mut().filter_map(|s| s.node.as_mut()) {
            node.tick();
        }
        self.drain();
    }

    /// The host's half of the run loop: handle every output until none is left.
    fn drain(&mut self) {
        let now = self.now;
        for server in &mut self.servers {
            let Some(node) = server.node.as_mut() else {
                continue;
            };
            let id = node.id();
            while let Some(output) = node.poll_output() {
                match output {
                    Output::StateChanged(change) => announce(now, id, change),
                    // Memory is "durable" at once; a real host writes the batch to its
                    // disk and flushes it here (or on another thread), then reports it.
                    Output::Persist(batch) => {
                        let token = batch.token;
                        node.persisted(token)
                    }
                    Output::Send { to, message } => {
                        self.network.push((id, to, OwnedMessage::from(&message)))
                    }
                    Output::Apply(e) if e.kind == EntryKind::Command => {
                        let text = String::from_utf8_lossy(e.data).into();
                        server.applied.push((e.index, text));
                    }
                    _ => {} // a new leader's no-op, and output kinds this host does not know
                }
            }
        }
        self.report_writes();
    }

    /// Announces each write once every live node has applied it.
    fn report_writes(&mut self) {
        let live: Vec<&Server> = self.servers.iter().filter(|s| s.node.is_some()).collect();
        let on = match live.len() {
            3 => "all nodes".to_string(),
            n => format!("the {n} live nodes"),
        };
        for w in self.writes.iter_mut().filter(|w| !w.done) {
            if live.iter().all(|s| s.applied.contains(&w.entry)) {
                w.done = true;
                let (index, text) = &w.entry;
                say!(self.now; "write {text:?} committed at index {index} on {on}");
            }
        }
    }

    /// The live leader of the highest term, with its term.
    fn leader(&self) -> Option<(NodeId, Term)> {
        let nodes = self.servers.iter().filter_map(|s| s.node.as_ref());
        let leaders = nodes.filter(|n| n.role() == Role::Leader);
        leaders
            .map(|n| (n.id(), n.term()))
            .max_by_key(|&(_, term)| term)
    }

    /// A client writes `text` through the leader.
    fn write(&mut self, text: &str) {
        let now = self.now;
        let Some((id, _)) = self.leader() else {
            return say!(now; "write {text:?} refused: no leader");
        };
        let leader = self.server(id).node.as_mut().expect("the leader is up");
        match leader.propose(text.as_bytes()) {
            Ok(p) => {
                say!(now; "client writes {text:?} to leader {id}: index {}", p.index);
                let entry = (p.index, text.to_string());
                self.writes.push(Write { entry, done: false });
            }
            Err(e) => say!(now; "write {text:?} refused: {e}"),
        }
        self.drain();
    }

    /// Ticks until `done` has an answer, for at most `limit` ticks.
    fn run_until<T>(&mut self, limit: u64, done: impl Fn(&Self) -> Option<T>) -> Option<T> {
        for _ in 0..limit {
            if let Some(answer) = done(self) {
                return Some(answer);
            }
            self.tick();
        }
        done(self)
    }

    /// Writes each command, one tick apart; true once all of them committed.
    fn write_all(&mut self, texts: &[&str]) -> bool {
        for text in texts {
            self.write(text);
            self.tick();
        }
        let all_done = |c: &Self| c.writes.iter().all(|w| w.done).then_some(());
        self.run_until(50, all_done).is_some()
    }

    /// The node loses its memory; its log survives on "disk".
    fn crash(&mut self, id: NodeId) {
        let now = self.now;
        let server = self.server(id);
        let node = server.node.take().expect("the node is up");
        let last = node.last_index();
        say!(now; "node {id} crashes; its log (up to index {last}) survives on disk");
        server.disk = Some(node.log().clone());
        server.applied.clear();
    }

    /// The node restarts from its log and replays it into a fresh state machine.
    fn restart(&mut self, id: NodeId) {
        let log = self.server(id).disk.take().expect("the node is down");
        let node = self.boot(id, log);
        let last = node.last_index();
        say!(self.now; "node {id} restarts from its log (up to index {last})");
        self.server(id).node = Some(node);
    }

    /// Records an expectation; `None` (stop the story) if it did not hold.
    fn check(&mut self, ok: bool, what: &'static str) -> Option<()> {
        self.checks.push((what, ok));
        ok.then_some(())
    }
}

/// Tells of role changes: campaigns, elections won, followers learning of their leader.
fn announce(now: u64, id: NodeId, s: StateChange) {
    match (s.role, s.leader) {
        (Role::Leader, _) => say!(now; "node {id} is leader of term {}", s.term),
        (Role::Candidate, _) => say!(now; "node {id} campaigns in term {}", s.term),
        (Role::Follower, Some(l)) => say!(now; "node {id} follows node {l} in term {}", s.term),
        _ => {}
    }
}

/// The story, stopping at the first expectation that does not hold.
fn story(c: &mut Cluster) -> Option<()> {
    let (first, term) = c.run_until(100, Cluster::leader).unwrap_or((0, 0));
    c.check(first != 0, "a leader is elected")?;
    let ok = c.write_all(&["x=1", "y=2", "z=3"]);
    c.check(ok, "3 writes are committed on all nodes")?;

    c.crash(first);
    let new_leader = |c: &Cluster| c.leader().filter(|&(id, t)| id != first && t > term);
    let new = c.run_until(300, new_leader);
    c.check(
        new.is_some(),
        "the survivors elect a new leader after the crash",
    )?;
    let ok = c.write_all(&["x=4", "w=5"]);
    c.check(ok, "2 more writes are committed by the new leader")?;

    c.restart(first);
    let ok = c.write_all(&["v=6"]) && c.servers.iter().all(|s| s.applied == c.servers[0].applied);
    if ok {
        say!(c.now; "node {first} caught up: it applied the same 6 writes as the others");
    }
    c.check(ok, "the crashed node restarts from its log and catches up")
}

fn main() -> ExitCode {
    let seed = std::env::args().skip_while(|a| a != "--seed").nth(1);
    let Ok(seed) = seed.map_or(Ok(1), |s| s.parse::<u64>()) else {
        eprintln!("usage: cluster [--seed N]");
        return ExitCode::from(2);
    };
    println!("Coracle: 3 nodes in one process, each message takes one tick, seed {seed}\n");
    let mut c = Cluster::new(seed);
    let finished = story(&mut c).is_some();

    println!("\nSummary after {} ticks:", c.now);
    for (id, server) in (1..).zip(&c.servers) {
        let writes: Vec<&str> = server.applied.iter().map(|(_, t)| t.as_str()).collect();
        println!("  node {id} applied: {}", writes.join(" "));
    }
    for (what, ok) in &c.checks {
        println!("  [{}] {what}", if *ok { " ok " } else { "FAIL" });
    }
    if finished {
        ExitCode::SUCCESS
    } else {
        println!("  an expectation failed (seed {seed})");
        ExitCode::FAILURE
    }
}
