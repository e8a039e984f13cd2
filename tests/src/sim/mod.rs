//! A deterministic cluster simulator: real `coracle` nodes in one thread, driven by a
//! seeded scheduler.
//!
//! One `u64` seed decides everything: node configurations and election jitter, each host's
//! memory log, network latency, loss, duplication and reordering, partitions (full,
//! asymmetric and partial), crashes that lose unflushed writes, restarts, pauses, clock rate
//! skew, disks that flush late, fail or answer reads late, membership churn and leadership
//! transfers asked by an operator, snapshots and log compaction by the hosts, and the
//! client workload (writes through the log, reads through ReadIndex or leases). The same
//! seed replays the same run, event for event.
//!
//! ## A host and its storage
//!
//! Each host runs one node on the core's storage contract: the node owns its *memory log*
//! ([`MemoryLog`]: a `VecLog`, a `CachedLog` with a small byte budget, or an `ArrayLog`,
//! chosen from the seed), and the host owns a *disk* ([`Disk`]) that changes only when the
//! host performs the node's `Output::Persist` batches. The host performs each batch as it
//! drains it (the page cache), flushes after a simulated disk delay, one flush at a time,
//! and then acknowledges with `Node::persisted`; a crash loses what was not flushed. It
//! answers `Output::Fetch` (a `CachedLog` misses memory) with entries read from its disk
//! after a read delay, reads the chunks of `Output::SendSnapshot` from its disk after a
//! delay too, snapshots its state machine into its disk and calls `Node::snapshot_taken`,
//! and restores on `Output::RestoreSnapshot` from its disk. A restart fills a fresh memory
//! log from the durable image and calls `Node::new`.
//!
//! ## Storage faults
//!
//! - `crash`: what was not flushed is lost, including batches performed and not yet
//!   acknowledged; with `torn`, a prefix of those batches may survive, the last of them cut
//!   within its entries (never a later batch without an earlier one).
//! - `slow-disk`: a host's flushes take 2 to 15 ms (an election timeout is 10 ticks of 1
//!   ms) for a while, so many batches wait at once; and an acknowledgement may reach the
//!   node well after its flush, so a crash can fall between a durable write and its
//!   acknowledgement.
//! - `disk-fail`: a flush fails: what it and later batches wrote is lost, the host calls
//!   `Node::persist_failed`, and restarts the node a little later as after a crash. The
//!   oracles check that the node says so (`Node::storage_failed`) and acknowledges nothing
//!   more, and that nothing it acknowledged is lost.
//! - `slow-reads`: fetches and snapshot chunk reads complete late (a long tail, so chunks
//!   leave out of order) and some fail (`Node::fetch_failed`; a chunk not sent).
//! - `lose-tail` (not in `all`): a restart finds fewer entries than the node acknowledged.
//! - `hung-disk` (not in `all`): a host's flushes do not return for 30 to 300 ms; its
//!   watchdog tells the node (`Node::set_storage_stalled`) once a flush has run for three
//!   election timeouts, and again when it returns, so a leader with a hung disk steps down
//!   and the others go on. Healing waits for the flushes it held before the liveness
//!   bounds start.
//!
//! ## Budgets
//!
//! A run bounds itself: past [`SimOptions::max_queued_events`] events waiting at once, or
//! [`SimOptions::max_heal_events`] events spent healing, it stops with a liveness
//! violation ("resource bound", naming the seed): a message storm fails fast instead of
//! exhausting the machine.
//!
//! The pieces:
//! - [`MemoryLog`] and [`Disk`]: the node's memory and the host's durable store, with the
//!   chain hashes the oracles compare logs by;
//! - [`Network`](network::Network): links and message fates;
//! - [`Client`](client::Client) and [`kv`]: a key-value workload whose history is checked
//!   for linearizability;
//! - [`Cluster`]: the hosts, the event queue, the nemesis that injects faults, and the
//!   [`Oracles`](crate::oracle::Oracles) run after every event.
//!
//! ```
//! use coracle_tests::sim::{run, SimOptions};
//!
//! let report = run(42, &SimOptions { steps: 3_000, ..SimOptions::default() }, None);
//! assert!(report.is_ok(), "{report}");
//! ```

pub mod client;
mod cluster;
pub mod disk;
pub mod kv;
pub mod memory;
pub mod network;
pub mod queue;
pub mod rng;

pub use cluster::{Change, Cluster, Membership, SimNode};
pub use disk::{Disk, LogImage};
pub use memory::{MemoryKind, MemoryLog};

use crate::linearizability::Key;
use crate::oracle::Violation;
use coracle::Config;
use std::fmt;
use std::io::Write;

/// Simulated time, in microseconds.
pub type Time = u64;

/// The nominal length of a tick (1 ms); with clock skew each node ticks a bit faster or
/// slower.
pub const TICK: Time = 1_000;

/// Which classes of faults the simulator injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Messages are lost at random.
    pub drop: bool,
    /// Messages are delivered twice at random.
    pub duplicate: bool,
    /// Messages on one link may overtake each other.
    pub reorder: bool,
    /// Latency follows a distribution with a long tail (otherwise it is fixed).
    pub delay: bool,
    /// Full partitions into groups.
    pub partition: bool,
    /// Links cut in one direction only.
    pub asymmetric: bool,
    /// Partial partitions (A, B, C connected; D reaches only B; E only C).
    pub partial: bool,
    /// Nodes crash (losing the writes not flushed) and restart.
    pub crash: bool,
    /// A crash may keep a prefix of the batches not flushed, the last one cut within its
    /// entries (a torn write).
    pub torn: bool,
    /// A host's disk flushes slowly for a while (many batches pending at once), and an
    /// acknowledgement may reach the node long after its flush.
    pub slow_disk: bool,
    /// A flush fails: the node is told (`Node::persist_failed`) and restarted soon after.
    pub disk_fail: bool,
    /// Reads of entries and snapshot chunks complete late and out of order, and some fail.
    pub slow_reads: bool,
    /// Nodes pause (a stopped process) and resume.
    pub pause: bool,
    /// Nodes tick at different rates.
    pub skew: bool,
    /// An operator changes the membership among a universe of two more ids than the
    /// initial voters: learners added, promoted, demoted, removed, joint changes.
    pub membership: bool,
    /// An operator asks the leader to hand leadership to another voter.
    pub transfer: bool,
    /// Hosts snapshot their state machine and compact their logs, so lagging and restarted
    /// nodes need InstallSnapshot.
    pub snapshot: bool,
    /// A restart may find the log shorter than what the node reported durable (a disk
    /// that lied about a flush, a segment cut by hand): the leader must notice and catch
    /// it up. Outside Raft's fault model, so not part of `all`; only entries every other
    /// node's disk also holds are lost (when the others are a majority), so safety must
    /// still hold and every oracle still runs.
    pub lose_tail: bool,
    /// A host's disk hangs for a while (no flush returns); the host's watchdog tells the
    /// node once a flush has run for three election timeouts (`Node::set_storage_stalled`),
    /// and again when it returns. Not part of `all` (it would change every seed's run).
    pub hung_disk: bool,
}

impl Faults {
    /// Every fault class.
    pub const ALL: Faults = Faults {
        drop: true,
        duplicate: true,
        reorder: true,
        delay: true,
        partition: true,
        asymmetric: true,
        partial: true,
        crash: true,
        torn: true,
        slow_disk: true,
        disk_fail: true,
        slow_reads: true,
        pause: true,
        skew: true,
        membership: true,
        transfer: true,
        snapshot: true,
        lose_tail: false,
        hung_disk: false,
    };

    /// No fault at all: a perfect network with fixed latency.
    pub const NONE: Faults = Faults {
        drop: false,
        duplicate: false,
        reorder: false,
        delay: false,
        partition: false,
        asymmetric: false,
        partial: false,
        crash: false,
        torn: false,
        slow_disk: false,
        disk_fail: false,
        slow_reads: false,
        pause: false,
        skew: false,
        membership: false,
        transfer: false,
        snapshot: false,
        lose_tail: false,
        hung_disk: false,
    };

    const NAMES: [&'static str; 19] = [
        "drop",
        "dup",
        "reorder",
        "delay",
        "partition",
        "asym",
        "partial",
        "crash",
        "torn",
        "slow-disk",
        "disk-fail",
        "slow-reads",
        "pause",
        "skew",
        "membership",
        "transfer",
        "snapshot",
        "lose-tail",
        "hung-disk",
    ];

    fn flags(&self) -> [bool; 19] {
        [
            self.drop,
            self.duplicate,
            self.reorder,
            self.delay,
            self.partition,
            self.asymmetric,
            self.partial,
            self.crash,
            self.torn,
            self.slow_disk,
            self.disk_fail,
            self.slow_reads,
            self.pause,
            self.skew,
            self.membership,
            self.transfer,
            self.snapshot,
            self.lose_tail,
            self.hung_disk,
        ]
    }

    fn flag_mut(&mut self, i: usize) -> &mut bool {
        match i {
            0 => &mut self.drop,
            1 => &mut self.duplicate,
            2 => &mut self.reorder,
            3 => &mut self.delay,
            4 => &mut self.partition,
            5 => &mut self.asymmetric,
            6 => &mut self.partial,
            7 => &mut self.crash,
            8 => &mut self.torn,
            9 => &mut self.slow_disk,
            10 => &mut self.disk_fail,
            11 => &mut self.slow_reads,
            12 => &mut self.pause,
            13 => &mut self.skew,
            14 => &mut self.membership,
            15 => &mut self.transfer,
            16 => &mut self.snapshot,
            17 => &mut self.lose_tail,
            _ => &mut self.hung_disk,
        }
    }

    /// Parses a comma-separated list of fault classes: `all`, `none`, or any of `drop`,
    /// `dup`, `reorder`, `delay`, `partition`, `asym`, `partial`, `crash`, `torn`,
    /// `slow-disk`, `disk-fail`, `slow-reads`, `pause`, `skew`, `membership`, `transfer`,
    /// `snapshot`, `lose-tail` and `hung-disk` (not part of `all`); a class prefixed with `-` is removed
    /// (`all,-pause`).
    pub fn parse(s: &str) -> Result<Faults, String> {
        let mut faults = Faults::NONE;
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let (on, name) = match word.strip_prefix('-') {
                Some(rest) => (false, rest),
                None => (true, word),
            };
            match name {
                "all" => faults = if on { Faults::ALL } else { Faults::NONE },
                "none" => faults = Faults::NONE,
                _ => {
                    let i = Self::NAMES.iter().position(|&n| n == name).ok_or_else(|| {
                        format!(
                            "unknown fault class `{name}` (known: all, none, {})",
                            Self::NAMES.join(", ")
                        )
                    })?;
                    *faults.flag_mut(i) = on;
                }
            }
        }
        Ok(faults)
    }

    /// True if some fault needs the operator (membership changes, transfers).
    pub fn any_operator(&self) -> bool {
        self.membership || self.transfer
    }

    /// True if some fault needs the nemesis (partitions, crashes, pauses, loss, disks).
    pub fn any_nemesis(&self) -> bool {
        self.drop
            || self.duplicate
            || self.partition
            || self.asymmetric
            || self.partial
            || self.crash
            || self.pause
            || self.slow_disk
            || self.disk_fail
    }
}

impl fmt::Display for Faults {
    /// The form [`Faults::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Faults::ALL {
            return f.write_str("all");
        }
        if *self
            == (Faults {
                lose_tail: true,
                ..Faults::ALL
            })
        {
            return f.write_str("all,lose-tail");
        }
        let on: Vec<&str> = self
            .flags()
            .iter()
            .zip(Self::NAMES)
            .filter(|(on, _)| **on)
            .map(|(_, n)| n)
            .collect();
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join(","))
        }
    }
}

/// A deliberately broken storage, to show that the oracles catch a broken node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A restarted node comes back without its vote and one term back: it can vote twice
    /// in a term.
    VoteAmnesia,
    /// A restarted node loses the last entries it had reported durable.
    LoseDurable,
    /// A host that does not lead answers reads from its own state machine at once,
    /// bypassing the log: stale reads, which the linearizability checker must catch.
    StaleReads,
    /// A host that believes it leads answers a linearizable read at once from its state
    /// machine, without the core confirming leadership (no ReadIndex round, no wait for
    /// the apply of the read index): a deposed or new leader serves stale values.
    UnconfirmedReads,
    /// A host acknowledges each batch as soon as it performs it, before its flush: a crash
    /// loses writes the node was told are durable.
    EarlyAck,
}

impl Bug {
    /// Parses `vote-amnesia`, `lose-durable`, `stale-reads`, `unconfirmed-reads` or
    /// `early-ack`.
    pub fn parse(s: &str) -> Result<Bug, String> {
        match s {
            "vote-amnesia" => Ok(Bug::VoteAmnesia),
            "lose-durable" => Ok(Bug::LoseDurable),
            "stale-reads" => Ok(Bug::StaleReads),
            "unconfirmed-reads" => Ok(Bug::UnconfirmedReads),
            "early-ack" => Ok(Bug::EarlyAck),
            _ => Err(format!(
                "unknown bug `{s}` (known: vote-amnesia, lose-durable, stale-reads, \
                 unconfirmed-reads, early-ack)"
            )),
        }
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bug::VoteAmnesia => "vote-amnesia",
            Bug::LoseDurable => "lose-durable",
            Bug::StaleReads => "stale-reads",
            Bug::UnconfirmedReads => "unconfirmed-reads",
            Bug::EarlyAck => "early-ack",
        })
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Cluster size (1 to 9): the initial voters. With the `membership` fault class the
    /// universe holds up to two more ids (at most 9), which start as non-members.
    pub nodes: usize,
    /// Events to run while faults are injected, before everything heals.
    pub steps: u64,
    /// The fault classes.
    pub faults: Faults,
    /// Simulated clients.
    pub clients: usize,
    /// Keys of the workload.
    pub keys: Key,
    /// A deliberately broken storage.
    pub bug: Option<Bug>,
    /// The node configuration (id, seed and applied are set per node); `None` picks one
    /// at random from the seed (timeouts, window, batch size, pre-vote, check-quorum).
    pub config: Option<Config>,
    /// The memory log of every host; `None` picks one per host from the seed (a `VecLog`,
    /// a `CachedLog` with a budget of 256 B to 4 KiB, or an `ArrayLog` of 128 entries when
    /// the snapshot chunks fit it).
    pub memory: Option<MemoryKind>,
    /// Check the client history for linearizability at the end.
    pub check_linearizability: bool,
    /// After everything heals: ticks within which a leader must be elected; clients must
    /// complete an operation within three times as many, and every node must catch up
    /// within as many again.
    pub liveness_ticks: u64,
    /// Search steps per key for the linearizability check.
    pub linearizability_budget: u64,
    /// Share of gets (0 to 100 percent) served as linearizable reads through `Node::read`
    /// (ReadIndex, or a lease when clocks do not skew) instead of through the log.
    pub read_percent: u64,
    /// Events that may wait in the queue at once (ticks, messages in flight, flushes). A
    /// run past it is a message storm: it fails with a liveness violation naming the seed
    /// instead of exhausting the machine's memory. Runs hold a few hundred.
    pub max_queued_events: usize,
    /// Events that healing and the liveness checks after it may take (they are bounded in
    /// simulated time, which a storm barely advances). Runs take about a thousand.
    pub max_heal_events: u64,
}

impl SimOptions {
    /// The `sim` command that runs `seed` with these options again, with a trace.
    ///
    /// ```
    /// use coracle_tests::sim::SimOptions;
    /// let command = SimOptions::default().replay_command(7);
    /// assert!(command.ends_with("--bin sim -- --seed 7 --nodes 5 --steps 20000 \
    ///                            --faults all --clients 3 --keys 3 --trace"));
    /// ```
    ///
    /// The node configuration ([`config`](Self::config)), the liveness bound and the
    /// share of reads are not options of `sim`: a run that changes them is replayed by
    /// the code that made it.
    pub fn replay_command(&self, seed: u64) -> String {
        format!(
            "cargo run --release -p coracle-tests --bin sim -- --seed {seed} --nodes {} {} \
             --trace",
            self.nodes,
            self.sim_flags()
        )
    }

    /// These options as flags of `sim`, except the cluster size (`--nodes`).
    pub fn sim_flags(&self) -> String {
        let mut flags = format!(
            "--steps {} --faults {} --clients {} --keys {}",
            self.steps, self.faults, self.clients, self.keys
        );
        if let Some(bug) = self.bug {
            flags.push_str(&format!(" --bug {bug}"));
        }
        if !self.check_linearizability {
            flags.push_str(" --no-lin");
        }
        if self.linearizability_budget != SimOptions::default().linearizability_budget {
            flags.push_str(&format!(" --budget {}", self.linearizability_budget));
        }
        flags
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 5,
            steps: 20_000,
            faults: Faults::ALL,
            clients: 3,
            keys: 3,
            bug: None,
            config: None,
            memory: None,
            check_linearizability: true,
            liveness_ticks: 200,
            linearizability_budget: 2_000_000,
            read_percent: 50,
            max_queued_events: 100_000,
            max_heal_events: 2_000_000,
        }
    }
}

/// The verdict on the client history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Linearizability {
    /// Not checked.
    Skipped,
    /// Linearizable.
    Linearizable,
    /// Not linearizable: the checker's report.
    NotLinearizable(String),
    /// The search budget ran out for these keys.
    Unknown(Vec<Key>),
}

/// Counts of what happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Simulated time at the end, in microseconds.
    pub sim_time: Time,
    /// Messages sent by nodes.
    pub messages: u64,
    /// Messages lost (loss, partitions, crashed receivers).
    pub dropped: u64,
    /// Leaders elected (distinct terms).
    pub elections: u64,
    /// Crashes.
    pub crashes: u64,
    /// Pauses.
    pub pauses: u64,
    /// Network changes (partitions, cuts, heals).
    pub network_changes: u64,
    /// Last committed index.
    pub committed: u64,
    /// Client operations answered.
    pub ops_ok: u64,
    /// Client operations that timed out.
    pub ops_timed_out: u64,
    /// Reads served through `Node::read`.
    pub reads: u64,
    /// Snapshots taken by hosts.
    pub snapshots: u64,
    /// Snapshots installed from a leader (restores of a state machine).
    pub installs: u64,
    /// Membership changes the leader accepted.
    pub membership_changes: u64,
    /// Leadership transfers the leader accepted.
    pub transfers: u64,
    /// Restores of a state machine from an installed snapshot not yet durable.
    pub restores_not_durable: u64,
    /// Reads of entries the nodes asked of their hosts (`Output::Fetch`).
    pub fetches: u64,
    /// Fetches that failed (`Node::fetch_failed`).
    pub fetch_failures: u64,
    /// Snapshot chunks read from a disk and sent.
    pub snapshot_chunks: u64,
    /// Flushes that failed (`Node::persist_failed`).
    pub write_failures: u64,
    /// Episodes of a slow disk.
    pub slow_disks: u64,
    /// Episodes of a hung disk (`hung-disk`).
    pub hung_disks: u64,
    /// Times a host's watchdog told its node the storage stalled.
    pub stalls_reported: u64,
    /// Of those, times the node was leading (it steps down).
    pub stalled_leaders: u64,
    /// Acknowledgements that reached a node well after their flush.
    pub late_acks: u64,
    /// Restarts that found the log shorter than what the node had reported durable
    /// (`lose-tail`), and the entries they lost.
    pub tails_lost: u64,
    /// Entries lost that way.
    pub entries_lost: u64,
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Events processed.
    pub events: u64,
    /// Safety and liveness violations (the run stops at the first safety one).
    pub violations: Vec<Violation>,
    /// The linearizability verdict.
    pub linearizability: Linearizability,
    /// Counts.
    pub stats: Stats,
}

impl RunReport {
    /// No violation, and the history found linearizable (or not checked): a history the
    /// checker could not decide is not a pass.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
            && matches!(
                self.linearizability,
                Linearizability::Linearizable | Linearizability::Skipped
            )
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "seed {}: {} events, {:.1} ms simulated, {} elections, commit {}, {} ops ok, \
             {} timed out, {} crashes, {} pauses, {} network changes, {}/{} messages lost, \
             {} reads, {} snapshots, {} installs, {} membership changes, {} transfers, \
             {} fetches ({} failed), {} snapshot chunks, {} write failures, {} slow disks",
            self.seed,
            self.events,
            s.sim_time as f64 / 1000.0,
            s.elections,
            s.committed,
            s.ops_ok,
            s.ops_timed_out,
            s.crashes,
            s.pauses,
            s.network_changes,
            s.dropped,
            s.messages,
            s.reads,
            s.snapshots,
            s.installs,
            s.membership_changes,
            s.transfers,
            s.fetches,
            s.fetch_failures,
            s.snapshot_chunks,
            s.write_failures,
            s.slow_disks
        )?;
        for v in &self.violations {
            write!(f, "\n  violation: {v}")?;
        }
        match &self.linearizability {
            Linearizability::NotLinearizable(r) => write!(f, "\n  not linearizable: {r}")?,
            Linearizability::Unknown(keys) => {
                write!(f, "\n  linearizability unknown for keys {keys:?}")?
            }
            Linearizability::Linearizable | Linearizability::Skipped => {}
        }
        Ok(())
    }
}

/// Runs one seed: faults for `options.steps` events, then healing and the liveness
/// checks, then the linearizability check. With `trace`, every event and every node's
/// state after it are written there.
pub fn run(seed: u64, options: &SimOptions, trace: Option<Box<dyn Write>>) -> RunReport {
    let mut cluster = Cluster::new(seed, options.clone(), trace);
    cluster.run_faults(options.steps);
    cluster.heal_and_check_liveness();
    cluster.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print() {
        assert_eq!(Faults::parse("all"), Ok(Faults::ALL));
        assert_eq!(Faults::parse("none"), Ok(Faults::NONE));
        let f = Faults::parse("all,-pause,-torn").expect("parse");
        assert!(!f.pause && !f.torn && f.crash);
        assert_eq!(Faults::parse(&f.to_string()), Ok(f));
        assert_eq!(Faults::ALL.to_string(), "all");
        assert!(Faults::parse("drop,bogus").is_err());
        let disks = Faults::parse("slow-disk,disk-fail,slow-reads").expect("parse");
        assert!(disks.slow_disk && disks.disk_fail && disks.slow_reads && !disks.crash);
        assert_eq!(disks.to_string(), "slow-disk,disk-fail,slow-reads");
        assert!(
            disks.any_nemesis(),
            "slow and failing disks come from the nemesis"
        );
        assert_eq!(
            Faults::parse("drop,dup").map(|f| f.to_string()),
            Ok("drop,dup".into())
        );
    }
}
