//! Leader election for external processes through leases, on the host API: a replicated
//! store of named leases, each grant with a fencing token (the Raft index of the grant).
//! Time is replicated state: the leader proposes a `Tick` every [`TICK`] and lease time is
//! the count of committed ticks, so every replica decides expiry alike and no client's
//! clock matters (while no leader ticks, leases do not run out). `cargo run -p coracle-quic
//! --example lease`: 3 nodes, 3 campaigners on 127.0.0.1; the holder dies, then the holder
//! and the Raft leader together (in `tests/lease/processes.rs`, processes killed -9).
use coracle::{Index, Role::Leader};
use coracle_quic::{config::NodeConfig, host::*};
use serde::{Deserialize, Serialize};
use smol::block_on;
use std::sync::{atomic::AtomicBool, atomic::Ordering::Relaxed, Arc};
use std::{collections::BTreeMap, error::Error, path::Path, time::Duration, time::Instant};

/// How often the leader advances lease time by one tick.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// A command of the lease store (postcard): `Campaign(name, holder, ttl)` grants lease
/// `name` if free or expired; `Renew(name, holder, token, ttl)` restarts it if `holder`
/// still holds it, `Release(name, holder, token)` ends it. `ttl` counts ticks.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Command {
    Tick,
    Campaign(String, String, u64),
    Renew(String, String, Index, u64),
    Release(String, String, Index),
}

/// One grant of a lease: to whom, its fencing token (the Raft index of the grant), and its
/// lease time in ticks (a renewal or a release moves `expires`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct Grant {
    pub name: String,
    pub holder: String,
    pub token: Index,
    pub granted_at: u64,
    pub expires: u64,
}

/// The replicated state: lease time, and every grant in order (the audit trail the test
/// checks; a production store would keep only the current grant of each name).
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Leases {
    pub now: u64,
    pub grants: Vec<Grant>,
    current: BTreeMap<String, usize>,
}

impl Leases {
    /// The valid grant of lease `name`, if any, at the current lease time.
    pub fn holder(&self, name: &str) -> Option<&Grant> {
        let g = self.grants.get(*self.current.get(name)?)?;
        (self.now < g.expires).then_some(g)
    }
}

impl StateMachine for Leases {
    /// The lease's valid grant after the command (someone else's when a campaign lost).
    type Response = Option<Grant>;
    type Snapshot = Vec<u8>;

    fn apply(&mut self, index: Index, command: &[u8]) -> Result<Option<Grant>, ApplyError> {
        let (name, holder, token, ttl) = match postcard::from_bytes(command) {
            Ok(Command::Campaign(name, holder, ttl)) => (name, holder, None, ttl),
            Ok(Command::Renew(name, holder, token, ttl)) => (name, holder, Some(token), ttl),
            Ok(Command::Release(name, holder, token)) => (name, holder, Some(token), 0),
            Ok(Command::Tick) => {
                self.now += 1;
                return Ok(None);
            }
            Err(_) => return Ok(None), // garbage: refused alike on every replica
        };
        let (now, current) = (self.now, self.holder(&name).map(|g| (&g.holder, g.token)));
        match (current, token) {
            (None, None) => {
                self.current.insert(name.clone(), self.grants.len());
                self.grants.push(Grant {
                    name: name.clone(),
                    holder,
                    token: index,
                    granted_at: now,
                    expires: now.saturating_add(ttl),
                });
            }
            (Some((h, held)), Some(token)) if *h == holder && held == token => {
                self.grants[self.current[&name]].expires = now.saturating_add(ttl);
            }
            _ => {}
        }
        Ok(self.holder(&name).cloned())
    }
    fn snapshot(&mut self, _applied: Index) -> Result<Vec<u8>, SnapshotError> {
        postcard::to_allocvec(self).map_err(|e| SnapshotError::Failed(e.to_string()))
    }
    fn restore(&mut self, _index: Index, from: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        let mut bytes = Vec::new();
        from.read_to_end(&mut bytes).map_err(RestoreError::Io)?;
        *self = postcard::from_bytes(&bytes).map_err(|e| RestoreError::Invalid(e.to_string()))?;
        Ok(())
    }
    fn response_codec() -> Option<ResponseCodec<Option<Grant>>> {
        Some(ResponseCodec::postcard()) // any node will do: a follower forwards to the leader
    }
}

/// The nodes a client may ask.
pub(crate) type Nodes = [Handle<Leases>];
/// Proposes `command` to whichever of `nodes` leads (a client would dial the leader).
pub(crate) fn propose(nodes: &Nodes, command: &Command) -> Result<Option<Grant>, ProposeError> {
    let bytes = postcard::to_allocvec(command).map_err(|e| ProposeError::Stopped(e.to_string()))?;
    let mut last = ProposeError::ShuttingDown;
    for h in nodes {
        match block_on(h.propose(bytes.clone())) {
            Ok(response) => return Ok(response),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The leader's clock: while `node` leads, a `Tick` every [`TICK`] on a schedule (slow commits
/// do not slow lease time; missed ticks are skipped, not sent in a burst); ends with the node.
pub(crate) fn tick(node: Handle<Leases>) {
    std::thread::spawn(move || {
        let mut next = Instant::now();
        while let Some(status) = block_on(node.status()) {
            if status.role == Leader {
                let _ = propose(std::slice::from_ref(&node), &Command::Tick);
            }
            next = (next + TICK).max(Instant::now());
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
}

/// A process campaigning as `me` for lease `name` (every tick; once it holds it, it renews
/// every third of `ttl`) until the flag returned is cleared: its death, with no release.
pub(crate) fn campaign(nodes: &Nodes, name: &str, me: &str, ttl: u64) -> Arc<AtomicBool> {
    let (alive, nodes) = (Arc::new(AtomicBool::new(true)), nodes.to_vec());
    let (up, name, me) = (alive.clone(), name.to_owned(), me.to_owned());
    std::thread::spawn(move || {
        let mut held = None;
        while up.load(Relaxed) {
            let command = match held {
                Some(token) => Command::Renew(name.clone(), me.clone(), token, ttl),
                None => Command::Campaign(name.clone(), me.clone(), ttl),
            };
            match propose(&nodes, &command) {
                Ok(Some(g)) if g.holder == me => held = Some(g.token),
                Ok(_) => held = None, // lost (expired before the renewal) or held by another
                Err(_) => {}          // no leader now: retry (lease time stands still too)
            }
            std::thread::sleep(TICK * held.map_or(1, |_| (ttl / 3).max(1)) as u32);
        }
    });
    alive
}

/// Who holds lease `name` now (a linearizable read on the first node that answers).
pub(crate) fn holder(nodes: &Nodes, name: &str) -> Option<Grant> {
    let read = |name: String| move |l: &Leases| l.holder(&name).cloned();
    let ask = |h: &Handle<Leases>| block_on(h.read(ReadMode::ReadIndex, read(name.into()))).ok();
    nodes.iter().find_map(ask)?
}

/// Starts 3 nodes on 127.0.0.1, files under `dir`, `extra` added to their configurations.
pub(crate) fn cluster(dir: &Path, extra: &str) -> Result<Vec<Host<Leases>>, Box<dyn Error>> {
    let configs = coracle_quic::loopback::configs(dir, 3, extra)?;
    let start = |c: &NodeConfig| Host::start(c, Leases::default());
    Ok(configs.iter().map(start).collect::<Result<_, _>>()?)
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("coracle-lease-{}", std::process::id()));
    let nodes = cluster(&dir, "")?;
    let handles: Vec<Handle<Leases>> = nodes.iter().map(Host::handle).collect();
    handles.iter().cloned().for_each(tick);
    let (ttl, start, mut dead) = (20, Instant::now(), String::new()); // TTL 20 ticks: 1 s
    let leads = |h: &&Handle<Leases>| block_on(h.status()).is_some_and(|s| s.role == Leader);
    let alive = [1, 2, 3].map(|i| campaign(&handles, "scheduler", &format!("worker-{i}"), ttl));
    for step in ["holder killed", "holder and Raft leader killed", "done"] {
        let at = Instant::now();
        let g = loop {
            match holder(&handles, "scheduler") {
                Some(g) if g.holder != dead => break g,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let (t, after, who, token) = (start.elapsed(), at.elapsed(), &g.holder, g.token);
        println!("{t:>8.2?}  {who} holds it, token {token} (after {after:.2?}); {step}");
        if step.contains("leader") {
            handles.iter().filter(leads).for_each(Handle::shutdown);
        }
        alive[who[7..].parse::<usize>()? - 1].store(false, Relaxed);
        dead = g.holder;
    }
    nodes.into_iter().try_for_each(|n| n.shutdown())?;
    Ok(std::fs::remove_dir_all(&dir)?)
}
