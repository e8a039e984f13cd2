//! `coracle demo --script`: the classic scenarios, one after the other, each printed with
//! what happened and how long it took. Every acknowledged write is remembered and checked
//! against the store after each fault; the run stops at the first unexpected outcome.

use super::cluster::{poll, Cluster};
use coracle::NodeId;
use coracle_quic::protocol::{Consistency, ReadOp, Request, Response};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// Generous bound on anything the cluster must do (a liveness bound, not a timing target).
const LIMIT: Duration = Duration::from_secs(30);
/// Writes per batch of a scenario.
const BATCH: usize = 100;

type Outcome = Result<(), String>;

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn detail(line: &str) {
    say(&format!("       {line}"));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Script<'a> {
    cluster: &'a mut Cluster,
    /// Every write the cluster acknowledged: the store must hold exactly these.
    acked: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Script<'_> {
    fn up(&mut self) -> Vec<NodeId> {
        self.cluster.up()
    }

    /// `n` sequential writes `prefix/NNN`; their latencies.
    async fn writes(&mut self, prefix: &str, n: usize) -> Result<Vec<Duration>, String> {
        let up = self.up();
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let (k, v) = (format!("{prefix}/{i:03}"), format!("value {i} of {prefix}"));
            let t = Instant::now();
            self.cluster
                .write(&k, &v, &up, &[], LIMIT)
                .await
                .map_err(|e| format!("write {k}: {e}"))?;
            lat.push(t.elapsed());
            self.acked.insert(k.into_bytes(), v.into_bytes());
        }
        Ok(lat)
    }

    /// The store (linearizable read, or node `on`'s local state) holds exactly the
    /// acknowledged writes.
    async fn check_store(&mut self, on: Option<NodeId>) -> Outcome {
        let up = self.up();
        let pairs = self.cluster.list(&up, on, LIMIT).await?;
        let found: BTreeMap<Vec<u8>, Vec<u8>> = pairs.into_iter().collect();
        if found == self.acked {
            return Ok(());
        }
        let missing = self
            .acked
            .keys()
            .filter(|k| !found.contains_key(*k))
            .count();
        let extra = found
            .keys()
            .filter(|k| !self.acked.contains_key(*k))
            .count();
        Err(format!(
            "{}: {missing} acknowledged writes missing, {extra} unexpected keys",
            on.map_or("linearizable read".to_string(), |id| format!("node {id}"))
        ))
    }

    /// Waits until node `id` has applied at least `index`; how long it took.
    async fn catch_up(&mut self, id: NodeId, index: u64) -> Result<Duration, String> {
        let t = Instant::now();
        let cluster = &*self.cluster;
        poll(LIMIT, async || {
            cluster
                .status(id)
                .await
                .filter(|s| s.applied >= index)
                .map(|_| ())
        })
        .await
        .ok_or_else(|| format!("node {id} did not catch up to index {index}"))?;
        Ok(t.elapsed())
    }

    async fn leader(&mut self) -> Result<(NodeId, u64), String> {
        let cluster = &*self.cluster;
        poll(LIMIT, async || cluster.agreed_leader().await)
            .await
            .ok_or_else(|| "the nodes agree on no leader".to_string())
    }

    async fn commit_of(&mut self, id: NodeId) -> Result<u64, String> {
        self.cluster
            .status(id)
            .await
            .map(|s| s.commit)
            .ok_or_else(|| format!("node {id} does not answer"))
    }

    fn err<T>(r: Result<T, crate::Error>) -> Result<T, String> {
        r.map_err(|e| e.to_string())
    }

    // --- the scenarios -------------------------------------------------------------

    async fn elect(&mut self) -> Outcome {
        let t = Instant::now();
        for id in 1..=self.cluster.len() as NodeId {
            Self::err(self.cluster.start(id))?;
        }
        let (leader, term) = self.leader().await?;
        say(&format!(
            "[ ok ] leader elected: node {leader} in term {term}, {} after the {} processes were spawned",
            ms(t.elapsed()),
            self.cluster.len()
        ));
        detail("(includes process start, TLS handshakes between the nodes and one randomized election timeout)");
        Ok(())
    }

    async fn commit(&mut self) -> Outcome {
        let t = Instant::now();
        let mut lat = self.writes("demo", BATCH).await?;
        let elapsed = t.elapsed();
        lat.sort();
        self.check_store(None).await?;
        say(&format!(
            "[ ok ] writes committed: {BATCH} writes one after the other in {} (latency p50 {}, p99 {}, max {}), each fsynced on a majority",
            ms(elapsed),
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0)),
            ms(percentile(&lat, 100.0)),
        ));
        detail("read back linearizably (ReadIndex): every acknowledged write is there");
        Ok(())
    }

    async fn replica_crash(&mut self) -> Outcome {
        let (leader, _) = self.leader().await?;
        let victim = self
            .up()
            .into_iter()
            .find(|&id| id != leader)
            .ok_or("no follower")?;
        Self::err(self.cluster.kill(victim))?;
        let t = Instant::now();
        self.writes("replica-down", BATCH).await?;
        let during = t.elapsed();
        let target = self.commit_of(leader).await?;
        Self::err(self.cluster.start(victim))?;
        let took = self.catch_up(victim, target).await?;
        self.check_store(Some(victim)).await?;
        say(&format!(
            "[ ok ] replica crash: follower node {victim} killed (SIGKILL); {BATCH} writes committed without it in {}",
            ms(during)
        ));
        detail(&format!(
            "restarted from its data directory, it caught up to index {target} in {} (process start included) and holds every acknowledged write",
            ms(took)
        ));
        Ok(())
    }

    async fn leader_crash(&mut self) -> Outcome {
        let (old, old_term) = self.leader().await?;
        let up: Vec<NodeId> = self.up().into_iter().filter(|&id| id != old).collect();
        Self::err(self.cluster.kill(old))?;
        let t = Instant::now();
        let (new, index) = self
            .cluster
            .write("failover/first", "after the crash", &up, &[], LIMIT)
            .await
            .map_err(|e| format!("no write committed after the leader crash: {e}"))?;
        let failover = t.elapsed();
        self.acked
            .insert(b"failover/first".to_vec(), b"after the crash".to_vec());
        let term = self.cluster.status(new).await.map_or(0, |s| s.term);
        let et = self.cluster.election_timeout();
        say(&format!(
            "[ ok ] leader crash: leader node {old} (term {old_term}) killed; node {new} elected in term {term}, first write committed (index {index}) {} after the crash",
            ms(failover)
        ));
        detail(&format!(
            "election timeout {}: failover took {:.2} election timeouts ({} the target of 2)",
            ms(et),
            failover.as_secs_f64() / et.as_secs_f64(),
            if failover < et * 2 { "within" } else { "OVER" }
        ));
        self.writes("new-leader", BATCH).await?;
        let target = self.commit_of(new).await?;
        Self::err(self.cluster.start(old))?;
        let took = self.catch_up(old, target).await?;
        let s = self.cluster.status(old).await.ok_or("old leader silent")?;
        if s.role == "Leader" {
            return Err(format!("node {old} restarted as leader of term {}", s.term));
        }
        self.check_store(Some(old)).await?;
        detail(&format!(
            "node {old} restarted as a {} of node {} and caught up to index {target} in {}",
            s.role.to_lowercase(),
            s.leader.map_or("?".into(), |l| l.to_string()),
            ms(took)
        ));
        Ok(())
    }

    async fn split(&mut self) -> Outcome {
        let (old, old_term) = self.leader().await?;
        let up = self.up();
        let majority: Vec<NodeId> = up.iter().copied().filter(|&id| id != old).collect();
        let before = self.cluster.status(old).await.ok_or("leader silent")?;
        // Cut the leader off on both sides.
        Self::err(self.cluster.isolate(old, majority.clone()).await)?;
        for &id in &majority {
            Self::err(self.cluster.isolate(id, vec![old]).await)?;
        }
        let t = Instant::now();
        let minority_request = self.cluster.write_request("split/minority", "lost");
        let cluster = &*self.cluster;
        // On the minority side: a write to the isolated leader (it must not commit) and the
        // moment it steps down; on the majority side: a new leader and writes.
        let minority = async {
            let answer = cluster
                .request(&minority_request, &[old], &[], Duration::from_millis(100))
                .await;
            let during = cluster.status(old).await;
            let stepped_down = poll(LIMIT, async || {
                cluster
                    .status(old)
                    .await
                    .filter(|s| s.role != "Leader")
                    .map(|_| t.elapsed())
            })
            .await;
            (answer, during, stepped_down)
        };
        let majority_side = async {
            let r = cluster
                .write("split/majority", "kept", &majority, &[old], LIMIT)
                .await;
            (r, t.elapsed())
        };
        let ((answer, during, stepped_down), (first, took)) =
            smol::future::zip(minority, majority_side).await;
        if let Ok((_, Response::Written { index, .. })) = &answer {
            return Err(format!(
                "the isolated leader committed a write at index {index}"
            ));
        }
        let (new, _) = first.map_err(|e| format!("the majority did not commit: {e}"))?;
        self.acked
            .insert(b"split/majority".to_vec(), b"kept".to_vec());
        let stepped_down = stepped_down.ok_or("the isolated leader never stepped down")?;
        let during = during.ok_or("the isolated leader does not answer")?;
        let new_term = self.cluster.status(new).await.map_or(0, |s| s.term);
        say(&format!(
            "[ ok ] network split: leader node {old} (term {old_term}) cut off from nodes {majority:?} by the admin fault-injection control"
        ));
        detail(&format!(
            "minority: node {old} took a write into its log (last index {} > commit {}) but could not commit it; the client got no acknowledgement ({})",
            during.last_index,
            during.commit,
            match &answer {
                Ok((_, r)) => format!("{r:?}"),
                Err(e) => e.clone(),
            }
        ));
        if during.last_index <= during.commit
            || during.commit > before.last_index.max(before.commit)
        {
            return Err(format!(
                "node {old}: commit {} / last {} during the split (before: commit {}, last {})",
                during.commit, during.last_index, before.commit, before.last_index
            ));
        }
        detail(&format!(
            "node {old} stepped down {} after the split (check-quorum: no majority heard)",
            ms(stepped_down)
        ));
        detail(&format!(
            "majority: node {new} elected in term {new_term}; first write committed {} after the split",
            ms(took)
        ));
        let mut lat = self.writes("split", BATCH).await?;
        lat.sort();
        detail(&format!(
            "the majority went on: {BATCH} more writes committed (p50 {})",
            ms(percentile(&lat, 50.0))
        ));
        // Heal.
        for &id in &up {
            Self::err(self.cluster.isolate(id, Vec::new()).await)?;
        }
        let target = self.commit_of(new).await?;
        let took = self.catch_up(old, target).await?;
        let after = self.cluster.status(old).await.ok_or("old leader silent")?;
        if after.role == "Leader" || after.term < new_term {
            return Err(format!(
                "after healing node {old} is {} in term {}",
                after.role, after.term
            ));
        }
        for &id in &up {
            let request = Request::Read {
                op: ReadOp::Get {
                    key: b"split/minority".to_vec(),
                },
                consistency: Consistency::Stale,
            };
            match self.cluster.request(&request, &[id], &[], LIMIT).await? {
                (_, Response::Value(None)) => {}
                (_, other) => {
                    return Err(format!("node {id} holds the minority's write: {other:?}"))
                }
            }
        }
        self.check_store(Some(old)).await?;
        self.check_store(None).await?;
        detail(&format!(
            "healed: node {old} follows node {} in term {} after {}; its uncommitted entry at index {} was rolled back (the key is absent on every node) and it holds every acknowledged write",
            after.leader.map_or("?".into(), |l| l.to_string()),
            after.term,
            ms(took),
            during.last_index
        ));
        Ok(())
    }

    async fn cold_restart(&mut self) -> Outcome {
        let ids = self.up();
        for &id in &ids {
            Self::err(self.cluster.kill(id))?;
        }
        let t = Instant::now();
        for &id in &ids {
            Self::err(self.cluster.start(id))?;
        }
        let (leader, term) = self.leader().await?;
        let elected = t.elapsed();
        self.check_store(None).await?;
        let target = self.commit_of(leader).await?;
        for &id in &ids {
            self.catch_up(id, target).await?;
            self.check_store(Some(id)).await?;
        }
        say(&format!(
            "[ ok ] cold restart: all {} nodes killed (SIGKILL) and restarted; node {leader} elected in term {term} {} later",
            ids.len(),
            ms(elected)
        ));
        detail(&format!(
            "all {} acknowledged writes present: read linearizably and in each node's own state",
            self.acked.len()
        ));
        Ok(())
    }
}

/// Runs every scenario on `cluster` (whose nodes are not started yet); true if every
/// outcome was the expected one.
pub fn run(cluster: &mut Cluster) -> bool {
    say(&format!(
        "coracle demo: {} nodes on {}, data and logs in {}",
        cluster.len(),
        cluster
            .addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cluster.dir().display()
    ));
    say(&format!(
        "each node is a `coracle node` process with its own certificate (mutual TLS) and fsynced log; election timeout {}",
        ms(cluster.election_timeout())
    ));
    let started = Instant::now();
    let mut script = Script {
        cluster,
        acked: BTreeMap::new(),
    };
    let outcome = smol::block_on(async {
        script.elect().await?;
        script.commit().await?;
        script.replica_crash().await?;
        script.leader_crash().await?;
        script.split().await?;
        script.cold_restart().await?;
        Ok::<(), String>(())
    });
    match outcome {
        Ok(()) => {
            say(&format!(
                "every outcome as expected ({} writes acknowledged and kept) in {}",
                script.acked.len(),
                ms(started.elapsed())
            ));
            true
        }
        Err(e) => {
            say(&format!("[FAIL] {e}"));
            script.cluster.keep();
            say(&format!(
                "the data and node logs are kept in {}",
                script.cluster.dir().display()
            ));
            false
        }
    }
}
