//! `node.toml`: the configuration of a node. Every field is explained in
//! [`EXAMPLE`] (the file `examples/node.toml` of this crate).
//!
//! Relative paths (data directory, certificates) are relative to the directory of the
//! configuration file. Unknown fields are errors, so a typo does not silently fall back to a
//! default.
//!
//! ```
//! let cfg = coracle_quic::config::NodeConfig::parse(coracle_quic::config::EXAMPLE, "/etc/coracle".as_ref()).unwrap();
//! assert_eq!(cfg.id, 1);
//! assert_eq!(cfg.voters(), vec![1, 2, 3]);
//! ```

use crate::protocol::MAX_CLIENT_FRAME;
use crate::tls::QuicSettings;
use crate::transport::{TransportSettings, DECODE_ENTRIES};
use coracle::NodeId;
use serde::Deserialize;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes a command's log entry may take beyond `raft.max_entry_bytes` (the KV command's
/// session, sequence number and encoding).
const ENTRY_ENVELOPE_BYTES: usize = 1024;

/// The example configuration, with every field explained.
pub const EXAMPLE: &str = include_str!("../examples/node.toml");

/// A member of the cluster and where it listens.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its node id.
    pub id: NodeId,
    /// Its address (`ip:port`).
    pub addr: SocketAddr,
}

/// Certificate files.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// Raft timing and limits.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Milliseconds per tick.
    pub tick_ms: u64,
    /// Minimum election timeout (ms).
    pub election_timeout_ms: u64,
    /// How far above the election timeout a follower's random timeout may fall, in per
    /// cent of it (1 to 100): 50, the default, draws from `[T, 1.5 T)`, so a new leader is
    /// elected sooner after the leader dies than with the paper's `[T, 2T)` (100), while
    /// the spread (150 ms by default) stays far above a vote round on a LAN.
    pub election_jitter_percent: u8,
    /// Heartbeat interval (ms).
    pub heartbeat_ms: u64,
    /// Pre-vote before elections.
    pub pre_vote: bool,
    /// Leaders step down without a quorum.
    pub check_quorum: bool,
    /// Entries per AppendEntries.
    pub max_entries_per_message: usize,
    /// Bytes per AppendEntries.
    pub max_bytes_per_message: usize,
    /// AppendEntries in flight per follower.
    pub max_inflight: usize,
    /// Uncommitted entries before proposals are refused.
    pub max_uncommitted_entries: u64,
    /// Largest command (bytes).
    pub max_entry_bytes: usize,
    /// A follower forwards a proposal to the leader over the node-to-node connection and
    /// answers with the leader's response (state machines with a
    /// [`ResponseCodec`](crate::host::ResponseCodec), the KV store's included); `false`:
    /// it answers "not leader" with the leader's address, as before.
    pub forward: bool,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: 1,
            election_timeout_ms: 300,
            election_jitter_percent: 50,
            heartbeat_ms: 50,
            pre_vote: true,
            check_quorum: true,
            max_entries_per_message: 256,
            max_bytes_per_message: 1 << 20,
            max_inflight: 8,
            max_uncommitted_entries: 8192,
            max_entry_bytes: 1 << 20,
            forward: true,
        }
    }
}

/// Connection settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Keep-alive interval (ms).
    pub keep_alive_ms: u64,
    /// Idle timeout (ms).
    pub idle_timeout_ms: u64,
    /// First redial delay (ms).
    pub reconnect_min_ms: u64,
    /// Largest redial delay (ms).
    pub reconnect_max_ms: u64,
    /// Largest frame accepted (bytes).
    pub max_frame_bytes: usize,
    /// Frames queued per peer.
    pub queue: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            keep_alive_ms: 500,
            idle_timeout_ms: 3000,
            reconnect_min_ms: 50,
            reconnect_max_ms: 2000,
            max_frame_bytes: 16 << 20,
            queue: 4096,
        }
    }
}

/// Storage settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Segment size (bytes).
    pub segment_bytes: u64,
    /// Preallocate segments: reuse compacted ones, or write zeros ahead of time (see
    /// `storage::Options::preallocate`).
    pub preallocate: bool,
    /// Quota on all segments (bytes), none if absent.
    pub max_log_bytes: Option<u64>,
    /// Snapshot the state machine about every this many applied entries, on a grid shifted
    /// by a third of it per node id so the nodes take turns (0: only when the log is full).
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot (so a follower a little behind gets
    /// entries, not the whole snapshot). With a quota (`max_log_bytes`), none: a snapshot
    /// compacts all it covers, so a full log always makes room.
    pub snapshot_keep_entries: u64,
    /// Bytes of entries the node keeps in memory (the newest ones, and older ones read
    /// back for a follower behind or to apply after a restart); the rest of the log is on
    /// disk only. A node's memory is bounded by this, not by the length of its log.
    pub memory_log_bytes: u64,
    /// A node whose flush of the log has not returned for this long (ms) treats its disk
    /// as stalled: it steps down if it leads, and neither campaigns nor votes until the
    /// flush returns. Absent: [`DEFAULT_STALL_ELECTION_TIMEOUTS`] election timeouts.
    pub stall_timeout_ms: Option<u64>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            segment_bytes: 64 << 20,
            preallocate: true,
            max_log_bytes: None,
            snapshot_entries: 100_000,
            snapshot_keep_entries: 10_000,
            memory_log_bytes: DEFAULT_MEMORY_LOG_BYTES,
            stall_timeout_ms: None,
        }
    }
}

/// The metrics endpoint (`[metrics]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`); none if absent.
    pub listen: Option<SocketAddr>,
}

/// Joining and membership (`[membership]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipConfig {
    /// A node started with `--join` asks the leader to make it a voter once it is caught
    /// up as a learner (within `caught_up_entries` of the leader's commit index).
    pub auto_promote: bool,
    /// How close to the leader's commit index a learner's applied index must be for it to
    /// count as caught up.
    pub caught_up_entries: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            auto_promote: true,
            caught_up_entries: DEFAULT_CAUGHT_UP_ENTRIES,
        }
    }
}

/// The default `membership.caught_up_entries`.
pub const DEFAULT_CAUGHT_UP_ENTRIES: u64 = 100;
/// The largest `membership.caught_up_entries`: a learner further behind than this is not
/// caught up by any reading.
pub const MAX_CAUGHT_UP_ENTRIES: u64 = 1_000_000;

/// The whole configuration of a node.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (must match its certificate).
    pub id: NodeId,
    /// The cluster id carried by every message.
    pub cluster_id: u64,
    /// Address to bind (nodes and clients).
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Initial voters; all peers (and this node) if absent.
    #[serde(default)]
    pub voters: Option<Vec<NodeId>>,
    /// Known members and their addresses.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Election priority (0 to 255; 0 for all changes nothing): a caught-up voter of
    /// higher priority is handed leadership, and campaigns first. Announced to the cluster
    /// when the node starts, so every node agrees on it; `coracle admin priority` changes
    /// it at run time until the node restarts.
    #[serde(default)]
    pub priority: u8,
    /// Certificate files.
    pub tls: TlsPaths,
    /// Raft settings.
    #[serde(default)]
    pub raft: RaftSettings,
    /// Transport settings.
    #[serde(default)]
    pub transport: TransportConfig,
    /// Storage settings.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Joining and membership.
    #[serde(default)]
    pub membership: MembershipConfig,
    /// The members a new node joins the cluster through (`coracle node --join`), not a
    /// node.toml key: when set, the node starts with no configuration of its own (it never
    /// campaigns) and waits to be added; `voters` and `[[peers]]` only give it addresses.
    #[serde(skip)]
    pub join: Vec<SocketAddr>,
}

/// A configuration that cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has wrong fields.
    Parse {
        /// The file.
        path: PathBuf,
        /// What and where.
        message: String,
    },
    /// The values do not fit together.
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read configuration {}: {source}", path.display())
            }
            ConfigError::Parse { path, message } => {
                write!(f, "bad configuration {}: {message}", path.display())
            }
            ConfigError::Invalid(m) => write!(f, "bad configuration: {m}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl NodeConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid(message) => {
                ConfigError::Invalid(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// Parses and checks configuration text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        for (key, p) in [
            ("data_dir", &mut cfg.data_dir),
            ("tls.ca", &mut cfg.tls.ca),
            ("tls.cert", &mut cfg.tls.cert),
            ("tls.key", &mut cfg.tls.key),
        ] {
            if p.as_os_str().is_empty() {
                problems.push(format!("{key} = \"\": a path is needed"));
            } else if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate(problems)?;
        Ok(cfg)
    }

    /// Checks every value and how the values fit together; all problems are reported at
    /// once, each with its key.
    fn validate(&self, mut problems: Vec<String>) -> Result<(), ConfigError> {
        self.check_members(&mut problems);
        self.raft.check(&mut problems);
        self.transport.check(&self.raft, &mut problems);
        self.storage.check(&mut problems);
        self.check_memory_log(&mut problems);
        self.check_stall_timeout(&mut problems);
        self.check_metrics(&mut problems);
        if !(1..=MAX_CAUGHT_UP_ENTRIES).contains(&self.membership.caught_up_entries) {
            problems.push(format!(
                "{}: must be 1 to {MAX_CAUGHT_UP_ENTRIES}",
                shown(
                    "membership.caught_up_entries",
                    self.membership.caught_up_entries
                )
            ));
        }
        if problems.is_empty() {
            // Only once every value is sane on its own.
            self.check_log_quota(&mut problems);
        }
        match problems.len() {
            0 => Ok(()),
            1 => Err(ConfigError::Invalid(problems.remove(0))),
            n => Err(ConfigError::Invalid(format!(
                "{n} problems:\n  {}",
                problems.join("\n  ")
            ))),
        }
    }

    /// `id`, `listen`, `voters` and `[[peers]]`.
    fn check_members(&self, problems: &mut Vec<String>) {
        let mut bad = |m: String| problems.push(m);
        if self.id == 0 {
            bad("id = 0: node ids start at 1".into());
        }
        let mut ids: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            bad("[[peers]]: a peer id appears twice".into());
        }
        let mut addrs: Vec<SocketAddr> = self.peers.iter().map(|p| p.addr).collect();
        addrs.sort_unstable();
        if addrs.windows(2).any(|w| w[0] == w[1]) {
            bad("[[peers]]: two peers have the same addr".into());
        }
        for p in &self.peers {
            if p.id == 0 {
                bad("[[peers]] id = 0: node ids start at 1".into());
            }
            if let Err(e) = check_node_addr(p.addr) {
                bad(format!(
                    "[[peers]] id = {}: addr = \"{}\": {e}",
                    p.id, p.addr
                ));
            }
        }
        if self.peers.len() > crate::host::PEERS + 1 {
            bad(format!(
                "[[peers]] lists {} members; this build supports at most {}",
                self.peers.len(),
                crate::host::PEERS + 1
            ));
        }
        if self.listen.ip().is_multicast() || self.listen.ip() == Ipv4Addr::BROADCAST {
            bad(format!(
                "listen = \"{}\": a node listens on one of its own addresses",
                self.listen
            ));
        }
        match self.peers.iter().find(|p| p.id == self.id) {
            Some(me) if !listens_at(self.listen, me.addr) => bad(format!(
                "listen = \"{}\" is not where [[peers]] says node {} is ({}): the other \
                 nodes would dial an address nobody listens on (listen on that address, or on \
                 {} with its port)",
                self.listen,
                self.id,
                me.addr,
                if me.addr.is_ipv4() { "0.0.0.0" } else { "[::]" },
            )),
            Some(_) => {}
            None if self.peers.is_empty() => {} // a cluster of this node alone
            None => bad(format!(
                "id = {}: this node is missing from [[peers]] (ids {}); add its own entry \
                 with the address the others reach it at",
                self.id,
                ids.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        let voters = self.voters();
        if voters.is_empty() {
            bad("voters = []: a cluster needs at least one voter".into());
        }
        if voters.len() > 7 {
            bad(format!(
                "voters: {} voters; this build supports at most 7",
                voters.len()
            ));
        }
        let mut sorted = voters.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            bad("voters: an id appears twice".into());
        }
        if sorted.first() == Some(&0) {
            bad("voters: node ids start at 1".into());
        }
        for v in voters {
            if v != self.id && !self.peers.iter().any(|p| p.id == v) {
                bad(format!(
                    "voters: node {v} has no address in [[peers]], so no node can reach it"
                ));
            }
        }
    }

    /// `storage.memory_log_bytes` against the messages it must feed: the entries read back
    /// at once take half of it, and should fill at least two AppendEntries.
    fn check_memory_log(&self, problems: &mut Vec<String>) {
        let least = (self.raft.max_bytes_per_message as u64)
            .saturating_mul(4)
            .max(MIN_MEMORY_LOG_BYTES);
        if !(least..=MAX_MEMORY_LOG_BYTES).contains(&self.storage.memory_log_bytes) {
            problems.push(format!(
                "{}: must be {least} (4 times raft.max_bytes_per_message, and at least \
                 {MIN_MEMORY_LOG_BYTES}) to {MAX_MEMORY_LOG_BYTES} (1 TiB)",
                shown("storage.memory_log_bytes", self.storage.memory_log_bytes)
            ));
        }
    }

    /// `storage.stall_timeout_ms`: no shorter than an election timeout (a leader that
    /// stepped down sooner would gain nothing: its successor needs that long to be elected,
    /// and an ordinary slow flush would cost the cluster its leader), at most a day.
    fn check_stall_timeout(&self, problems: &mut Vec<String>) {
        let Some(ms) = self.storage.stall_timeout_ms else {
            return;
        };
        let least = self.raft.election_timeout_ms;
        if !(least..=MAX_MS).contains(&ms) {
            problems.push(format!(
                "{}: must be at least raft.election_timeout_ms ({least}) and at most {MAX_MS} \
                 (a day)",
                shown("storage.stall_timeout_ms", ms)
            ));
        }
    }

    /// `[metrics] listen`: an address of this host to bind.
    fn check_metrics(&self, problems: &mut Vec<String>) {
        let Some(addr) = self.metrics.listen else {
            return;
        };
        if addr.ip().is_multicast() || addr.ip() == Ipv4Addr::BROADCAST {
            problems.push(format!(
                "metrics.listen = \"{addr}\": a multicast or broadcast address; give an \
                 address of this host (127.0.0.1:9100, or 0.0.0.0:9100 for every address)"
            ));
        }
    }

    /// How long a flush may run before the disk counts as stalled
    /// (`storage.stall_timeout_ms`).
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(
            self.storage.stall_timeout_ms.unwrap_or(
                self.raft
                    .election_timeout_ms
                    .saturating_mul(DEFAULT_STALL_ELECTION_TIMEOUTS),
            ),
        )
    }

    /// `[storage]` against what the log needs: a quota compaction can get under.
    fn check_log_quota(&self, problems: &mut Vec<String>) {
        let Err(crate::storage::FileLogError::QuotaTooSmall {
            limit,
            least,
            largest_segment_bytes,
            ..
        }) = self.log_options().check()
        else {
            return;
        };
        let instead = match largest_segment_bytes {
            Some(s) => format!(", or storage.segment_bytes to at most {s}"),
            None if limit >= crate::storage::MIN_LOG_BYTES => {
                ", or lower storage.segment_bytes and raft.max_entry_bytes".into()
            }
            None => String::new(),
        };
        problems.push(format!(
            "storage.max_log_bytes = {limit} is too small for storage.segment_bytes = {} and \
             raft.max_entry_bytes = {}: compaction deletes whole segments and never the one \
             being written (up to a segment plus one entry), so the log could stay full and \
             refuse every write for good. Set storage.max_log_bytes to at least {least}{instead}",
            self.storage.segment_bytes, self.raft.max_entry_bytes
        ));
    }

    /// The options of this node's log.
    pub fn log_options(&self) -> crate::storage::Options {
        crate::storage::Options::new()
            .segment_bytes(self.storage.segment_bytes)
            .preallocate(self.storage.preallocate)
            .max_log_bytes(self.storage.max_log_bytes)
            .max_entry_bytes(
                self.raft
                    .max_entry_bytes
                    .saturating_add(ENTRY_ENVELOPE_BYTES),
            )
            .keep_behind_snapshot(self.keep_behind_snapshot())
            .member(self.cluster_id, self.id)
    }

    /// Entries kept behind a snapshot: `storage.snapshot_keep_entries`, or none under a
    /// quota (a full log must be able to drop all a snapshot covers).
    pub fn keep_behind_snapshot(&self) -> u64 {
        match self.storage.max_log_bytes {
            Some(_) => 0,
            None => self.storage.snapshot_keep_entries,
        }
    }

    /// The memory budget of the node's log (`storage.memory_log_bytes`).
    pub fn memory_log_bytes(&self) -> usize {
        usize::try_from(self.storage.memory_log_bytes).unwrap_or(usize::MAX)
    }

    /// The initial voters.
    pub fn voters(&self) -> Vec<NodeId> {
        match &self.voters {
            Some(v) => v.clone(),
            None => {
                let mut v: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
                if !v.contains(&self.id) {
                    v.push(self.id);
                }
                v.sort_unstable();
                v
            }
        }
    }

    /// Where the other nodes reach this one: its own `[[peers]]` address (which `listen`
    /// may differ from by an unspecified IP such as `0.0.0.0`), if it is listed.
    pub fn advertised(&self) -> Option<SocketAddr> {
        self.peers.iter().find(|p| p.id == self.id).map(|p| p.addr)
    }

    /// The core's configuration.
    pub fn raft_config(&self, applied: coracle::Index) -> coracle::Config {
        let r = &self.raft;
        let ticks = |ms: u64| (ms / r.tick_ms).clamp(1, u32::MAX as u64) as u32;
        let mut c = coracle::Config::new(self.id, seed(self.id));
        c.election_ticks = ticks(r.election_timeout_ms).max(2);
        c.election_jitter_percent = r.election_jitter_percent;
        c.heartbeat_ticks = ticks(r.heartbeat_ms).min(c.election_ticks - 1);
        c.retransmit_ticks = (c.heartbeat_ticks * 2).max(1);
        c.pre_vote = r.pre_vote;
        c.check_quorum = r.check_quorum;
        c.max_entries_per_message = r.max_entries_per_message;
        c.max_bytes_per_message = r.max_bytes_per_message;
        c.max_inflight = r.max_inflight.clamp(1, crate::host::INFLIGHT);
        c.max_uncommitted_entries = r.max_uncommitted_entries;
        c.max_entry_bytes = r.max_entry_bytes;
        c.max_snapshot_chunk_bytes = (r.max_bytes_per_message / 2).max(1024);
        c.lease_drift_ticks = (c.election_ticks / 10).max(1);
        c.applied = applied;
        c.keep_entries_behind_snapshot = self.keep_behind_snapshot();
        c.priority = self.priority;
        c
    }

    /// Duration of one tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.raft.tick_ms)
    }

    /// QUIC connection settings.
    pub fn quic(&self) -> QuicSettings {
        QuicSettings {
            keep_alive: Duration::from_millis(self.transport.keep_alive_ms),
            idle_timeout: Duration::from_millis(self.transport.idle_timeout_ms),
        }
    }

    /// Transport settings.
    pub fn transport_settings(&self) -> TransportSettings {
        TransportSettings {
            reconnect_min: Duration::from_millis(self.transport.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.transport.reconnect_max_ms),
            max_frame: self.transport.max_frame_bytes,
            queue: self.transport.queue,
        }
    }
}

/// The longest duration any `*_ms` setting takes: a day. Longer is a typo, not a plan, and
/// every value up to it fits the tick and duration arithmetic with room to spare.
pub const MAX_MS: u64 = 86_400_000;
/// The longest tick: a second.
pub const MAX_TICK_MS: u64 = 1000;
/// The most frames queued per peer (`transport.queue`): the queue's memory is taken when
/// the peer's link is made, about 50 bytes a frame.
pub const MAX_QUEUE: usize = 1 << 20;
/// The smallest segment (`storage.segment_bytes`): below it nearly every entry would get a
/// file of its own.
pub const MIN_SEGMENT_BYTES: u64 = 1024;
/// The largest segment: each is preallocated in full, and a spare is kept ahead.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 30;
/// The default of `storage.stall_timeout_ms`, in election timeouts: long enough that a
/// slow but working disk (a burst of writes, a snapshot flushed) keeps its leader, short
/// enough that writes resume within a few seconds of a disk that hangs.
pub const DEFAULT_STALL_ELECTION_TIMEOUTS: u64 = 3;
/// The default of `storage.memory_log_bytes`: 64 MiB.
pub const DEFAULT_MEMORY_LOG_BYTES: u64 = 64 << 20;
/// The smallest `storage.memory_log_bytes`.
pub const MIN_MEMORY_LOG_BYTES: u64 = 1 << 20;
/// The largest `storage.memory_log_bytes`: 1 TiB.
pub const MAX_MEMORY_LOG_BYTES: u64 = 1 << 40;
/// Room for an AppendEntries' envelope around its entries in a stream frame.
const FRAME_OVERHEAD: usize = 4096;

/// Checks that `addr` can be a node's address (where it is dialed): a port, and an IP that
/// names one host.
pub fn check_node_addr(addr: SocketAddr) -> Result<(), String> {
    let ip = addr.ip();
    if addr.port() == 0 {
        return Err("port 0 is no port to reach a node at".into());
    }
    if ip.is_unspecified() {
        return Err(format!(
            "{ip} names no host; give the address the node is reached at"
        ));
    }
    if ip.is_multicast() || ip == Ipv4Addr::BROADCAST {
        return Err(format!(
            "{ip} is a multicast or broadcast address, not a node's"
        ));
    }
    Ok(())
}

/// True if a socket bound to `listen` receives what is sent to `addr`: the same port, and
/// the same IP or the unspecified one (`0.0.0.0` for IPv4, `[::]` for both families).
fn listens_at(listen: SocketAddr, addr: SocketAddr) -> bool {
    let ip = listen.ip();
    listen.port() == addr.port()
        && (ip == addr.ip() || (ip.is_unspecified() && (ip.is_ipv6() || addr.is_ipv4())))
}

/// `key = value` for messages.
fn shown(key: &str, value: impl fmt::Display) -> String {
    format!("{key} = {value}")
}

impl RaftSettings {
    fn check(&self, problems: &mut Vec<String>) {
        let mut bad = |key: &str, value: u64, why: String| {
            problems.push(format!("{}: {why}", shown(&format!("raft.{key}"), value)))
        };
        let r = self;
        if !(1..=MAX_TICK_MS).contains(&r.tick_ms) {
            bad("tick_ms", r.tick_ms, format!("must be 1 to {MAX_TICK_MS}"));
            return; // the checks below count in ticks
        }
        if r.election_timeout_ms < 2 * r.tick_ms || r.election_timeout_ms > MAX_MS {
            bad(
                "election_timeout_ms",
                r.election_timeout_ms,
                format!(
                    "must be at least 2 ticks (raft.tick_ms = {}) and at most {MAX_MS} (a day)",
                    r.tick_ms
                ),
            );
        } else if r.heartbeat_ms < r.tick_ms
            || r.heartbeat_ms / r.tick_ms >= r.election_timeout_ms / r.tick_ms
        {
            bad(
                "heartbeat_ms",
                r.heartbeat_ms,
                format!(
                    "must be at least one tick ({} ms) and, in whole ticks, below \
                     raft.election_timeout_ms ({})",
                    r.tick_ms, r.election_timeout_ms
                ),
            );
        }
        if !(1..=100).contains(&r.election_jitter_percent) {
            bad(
                "election_jitter_percent",
                u64::from(r.election_jitter_percent),
                "must be 1 to 100 (per cent of raft.election_timeout_ms)".into(),
            );
        }
        if !(1..=DECODE_ENTRIES).contains(&r.max_entries_per_message) {
            bad(
                "max_entries_per_message",
                r.max_entries_per_message as u64,
                format!("must be 1 to {DECODE_ENTRIES}"),
            );
        }
        if r.max_bytes_per_message == 0 {
            bad("max_bytes_per_message", 0, "must be at least 1".into());
        }
        if !(1..=crate::host::INFLIGHT).contains(&r.max_inflight) {
            bad(
                "max_inflight",
                r.max_inflight as u64,
                format!("must be 1 to {}", crate::host::INFLIGHT),
            );
        }
        if r.max_uncommitted_entries == 0 {
            bad(
                "max_uncommitted_entries",
                0,
                "must be at least 1 (0 refuses every proposal)".into(),
            );
        }
        if !(1..=MAX_CLIENT_FRAME).contains(&r.max_entry_bytes) {
            bad(
                "max_entry_bytes",
                r.max_entry_bytes as u64,
                format!(
                    "must be 1 to {MAX_CLIENT_FRAME} (the largest client request); 0 refuses \
                     every command"
                ),
            );
        }
    }
}

impl TransportConfig {
    fn check(&self, raft: &RaftSettings, problems: &mut Vec<String>) {
        let mut bad = |key: &str, value: u64, why: String| {
            problems.push(format!(
                "{}: {why}",
                shown(&format!("transport.{key}"), value)
            ))
        };
        let t = self;
        if !(1..=MAX_MS).contains(&t.keep_alive_ms) {
            bad(
                "keep_alive_ms",
                t.keep_alive_ms,
                format!("must be 1 to {MAX_MS}"),
            );
        }
        if t.idle_timeout_ms <= t.keep_alive_ms || t.idle_timeout_ms > MAX_MS {
            bad(
                "idle_timeout_ms",
                t.idle_timeout_ms,
                format!(
                    "must exceed transport.keep_alive_ms ({}) and be at most {MAX_MS}",
                    t.keep_alive_ms
                ),
            );
        }
        if !(1..=MAX_MS).contains(&t.reconnect_min_ms) {
            bad(
                "reconnect_min_ms",
                t.reconnect_min_ms,
                format!("must be 1 to {MAX_MS}"),
            );
        }
        if t.reconnect_max_ms < t.reconnect_min_ms || t.reconnect_max_ms > MAX_MS {
            bad(
                "reconnect_max_ms",
                t.reconnect_max_ms,
                format!(
                    "must be at least transport.reconnect_min_ms ({}) and at most {MAX_MS}",
                    t.reconnect_min_ms
                ),
            );
        }
        // An AppendEntries carries at least one entry, however large, and a stream frame
        // holds one message: a frame limit below either would refuse replication forever.
        let needed = raft
            .max_bytes_per_message
            .max(raft.max_entry_bytes)
            .saturating_add(FRAME_OVERHEAD);
        if t.max_frame_bytes < needed || t.max_frame_bytes > u32::MAX as usize {
            bad(
                "max_frame_bytes",
                t.max_frame_bytes as u64,
                format!(
                    "must be at least {needed} (raft.max_bytes_per_message and \
                     raft.max_entry_bytes, plus {FRAME_OVERHEAD}) and at most {} (a 4-byte \
                     length)",
                    u32::MAX
                ),
            );
        }
        if !(1..=MAX_QUEUE).contains(&t.queue) {
            bad("queue", t.queue as u64, format!("must be 1 to {MAX_QUEUE}"));
        }
    }
}

impl StorageConfig {
    fn check(&self, problems: &mut Vec<String>) {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            problems.push(format!(
                "{}: must be {MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES} (64 GiB)",
                shown("storage.segment_bytes", self.segment_bytes)
            ));
        }
    }
}

/// A seed for the election jitter that differs per node and per start.
fn seed(id: NodeId) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_mistakes_are_reported() {
        let cfg = NodeConfig::parse(EXAMPLE, Path::new("/base")).unwrap();
        assert_eq!(cfg.data_dir, Path::new("/base/data/node-1"));
        assert_eq!(cfg.peers.len(), 3);
        let typo = EXAMPLE.replace("cluster_id", "clusterid");
        assert!(matches!(
            NodeConfig::parse(&typo, Path::new(".")),
            Err(ConfigError::Parse { .. })
        ));
        let bad = EXAMPLE.replace("heartbeat_ms = 50", "heartbeat_ms = 5000");
        assert!(matches!(
            NodeConfig::parse(&bad, Path::new(".")),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn forwarding_is_on_by_default_and_a_value_that_is_no_bool_is_refused() {
        assert!(
            NodeConfig::parse(EXAMPLE, Path::new("."))
                .unwrap()
                .raft
                .forward
        );
        let off = EXAMPLE.replace("forward = true", "forward = false");
        assert!(
            !NodeConfig::parse(&off, Path::new("."))
                .unwrap()
                .raft
                .forward
        );
        for bad in ["forward = \"yes\"", "forward = 1", "forward = []"] {
            let text = EXAMPLE.replace("forward = true", bad);
            let e = NodeConfig::parse(&text, Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(e.contains("forward"), "{bad}: {e}");
        }
    }

    /// `priority` and `[membership]`: the defaults, what is accepted, and garbage refused
    /// naming the key (parse errors for values of the wrong type or range, unknown keys).
    #[test]
    fn priorities_and_membership_settings_are_checked() {
        let cfg = NodeConfig::parse(EXAMPLE, Path::new("/base")).unwrap();
        assert_eq!(cfg.priority, 0);
        assert_eq!(cfg.membership, MembershipConfig::default());
        assert!(cfg.membership.auto_promote);
        assert!(cfg.join.is_empty());
        let text = EXAMPLE
            .replacen("# priority = 0", "priority = 255", 1)
            .replacen("auto_promote = true", "auto_promote = false", 1)
            .replacen("caught_up_entries = 100", "caught_up_entries = 1000000", 1);
        let cfg = NodeConfig::parse(&text, Path::new("/base")).unwrap();
        assert_eq!(cfg.priority, 255);
        assert_eq!(cfg.raft_config(0).priority, 255);
        assert!(!cfg.membership.auto_promote);
        assert_eq!(cfg.membership.caught_up_entries, 1_000_000);
        for (from, to, key) in [
            ("# priority = 0", "priority = 256", "priority"),
            ("# priority = 0", "priority = -1", "priority"),
            ("# priority = 0", "priority = \"high\"", "priority"),
            ("auto_promote = true", "auto_promote = 1", "auto_promote"),
            (
                "caught_up_entries = 100",
                "caught_up_entries = -5",
                "caught_up_entries",
            ),
            ("caught_up_entries = 100", "caught_ups = 5", "caught_ups"),
            ("# priority = 0", "join = [\"127.0.0.1:7002\"]", "join"),
        ] {
            let text = EXAMPLE.replacen(from, to, 1);
            assert_ne!(text, EXAMPLE, "{from}");
            let e = NodeConfig::parse(&text, Path::new("/base"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{to}: {e}");
        }
        for bad in ["caught_up_entries = 0", "caught_up_entries = 1000001"] {
            let text = EXAMPLE.replacen("caught_up_entries = 100", bad, 1);
            let e = problems(&text).unwrap();
            assert!(e.contains("membership.caught_up_entries"), "{bad}: {e}");
        }
    }

    /// The problems `text` has, or `None` if it is accepted.
    fn problems(text: &str) -> Option<String> {
        match NodeConfig::parse(text, Path::new("/base")) {
            Ok(_) => None,
            Err(ConfigError::Invalid(m)) => Some(m),
            Err(e) => panic!("not a validation error: {e}"),
        }
    }

    /// Every key of the example with a value that makes no sense: each is refused with a
    /// message that names the key.
    #[test]
    fn nonsense_values_are_refused_naming_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("id = 1\n", "id = 0\n", "id = 0"),
            ("id = 1\n", "id = 4\n", "missing from [[peers]]"),
            (
                "listen = \"127.0.0.1:7001\"",
                "listen = \"127.0.0.1:7002\"",
                "listen",
            ),
            (
                "listen = \"127.0.0.1:7001\"",
                "listen = \"127.0.0.2:7001\"",
                "listen",
            ),
            (
                "listen = \"127.0.0.1:7001\"",
                "listen = \"0.0.0.0:7009\"",
                "listen",
            ),
            (
                "listen = \"127.0.0.1:7001\"",
                "listen = \"[::]:7009\"",
                "listen",
            ),
            (
                "listen = \"127.0.0.1:7001\"",
                "listen = \"224.0.0.1:7001\"",
                "listen",
            ),
            ("data_dir = \"data/node-1\"", "data_dir = \"\"", "data_dir"),
            ("ca = \"certs/ca.pem\"", "ca = \"\"", "tls.ca"),
            ("cert = \"certs/node-1.pem\"", "cert = \"\"", "tls.cert"),
            ("key = \"certs/node-1.key\"", "key = \"\"", "tls.key"),
            ("# voters = [1, 2, 3]", "voters = [1, 2, 2]", "voters"),
            ("# voters = [1, 2, 3]", "voters = [1, 2, 9]", "node 9"),
            ("# voters = [1, 2, 3]", "voters = []", "voters"),
            (
                "id = 2\naddr = \"127.0.0.1:7002\"",
                "id = 0\naddr = \"127.0.0.1:7002\"",
                "[[peers]] id = 0",
            ),
            (
                "id = 2\naddr = \"127.0.0.1:7002\"",
                "id = 3\naddr = \"127.0.0.1:7002\"",
                "twice",
            ),
            (
                "addr = \"127.0.0.1:7002\"",
                "addr = \"127.0.0.1:7003\"",
                "same addr",
            ),
            (
                "addr = \"127.0.0.1:7002\"",
                "addr = \"127.0.0.1:0\"",
                "port 0",
            ),
            (
                "addr = \"127.0.0.1:7002\"",
                "addr = \"0.0.0.0:7002\"",
                "names no host",
            ),
            (
                "addr = \"127.0.0.1:7002\"",
                "addr = \"255.255.255.255:7002\"",
                "broadcast",
            ),
            ("tick_ms = 1", "tick_ms = 0", "raft.tick_ms"),
            ("tick_ms = 1", "tick_ms = 5000", "raft.tick_ms"),
            ("tick_ms = 1", "tick_ms = 200", "raft.election_timeout_ms"),
            ("tick_ms = 1", "tick_ms = 60", "raft.heartbeat_ms"),
            (
                "election_timeout_ms = 300",
                "election_timeout_ms = 0",
                "raft.election_timeout_ms",
            ),
            (
                "election_timeout_ms = 300",
                "election_timeout_ms = 9223372036854775807",
                "raft.election_timeout_ms",
            ),
            ("heartbeat_ms = 50", "heartbeat_ms = 0", "raft.heartbeat_ms"),
            (
                "election_jitter_percent = 50",
                "election_jitter_percent = 0",
                "raft.election_jitter_percent",
            ),
            (
                "election_jitter_percent = 50",
                "election_jitter_percent = 101",
                "raft.election_jitter_percent",
            ),
            (
                "heartbeat_ms = 50",
                "heartbeat_ms = 300",
                "raft.heartbeat_ms",
            ),
            (
                "max_entries_per_message = 256",
                "max_entries_per_message = 0",
                "raft.max_entries_per_message",
            ),
            (
                "max_entries_per_message = 256",
                "max_entries_per_message = 513",
                "raft.max_entries_per_message",
            ),
            (
                "max_bytes_per_message = 1048576",
                "max_bytes_per_message = 0",
                "raft.max_bytes_per_message",
            ),
            (
                "max_bytes_per_message = 1048576",
                "max_bytes_per_message = 9223372036854775807",
                "transport.max_frame_bytes",
            ),
            ("max_inflight = 8", "max_inflight = 0", "raft.max_inflight"),
            ("max_inflight = 8", "max_inflight = 17", "raft.max_inflight"),
            (
                "max_uncommitted_entries = 8192",
                "max_uncommitted_entries = 0",
                "raft.max_uncommitted_entries",
            ),
            (
                "max_entry_bytes = 1048576",
                "max_entry_bytes = 0",
                "raft.max_entry_bytes",
            ),
            (
                "max_entry_bytes = 1048576",
                "max_entry_bytes = 9223372036854775807",
                "raft.max_entry_bytes",
            ),
            (
                "max_entry_bytes = 1048576",
                "max_entry_bytes = 16777216",
                "transport.max_frame_bytes",
            ),
            (
                "keep_alive_ms = 500",
                "keep_alive_ms = 0",
                "transport.keep_alive_ms",
            ),
            (
                "keep_alive_ms = 500",
                "keep_alive_ms = 9223372036854775807",
                "transport.keep_alive_ms",
            ),
            (
                "idle_timeout_ms = 3000",
                "idle_timeout_ms = 500",
                "transport.idle_timeout_ms",
            ),
            (
                "idle_timeout_ms = 3000",
                "idle_timeout_ms = 9223372036854775807",
                "transport.idle_timeout_ms",
            ),
            (
                "reconnect_min_ms = 50",
                "reconnect_min_ms = 0",
                "transport.reconnect_min_ms",
            ),
            (
                "reconnect_max_ms = 2000",
                "reconnect_max_ms = 10",
                "transport.reconnect_max_ms",
            ),
            (
                "reconnect_max_ms = 2000",
                "reconnect_max_ms = 9223372036854775807",
                "transport.reconnect_max_ms",
            ),
            (
                "max_frame_bytes = 16777216",
                "max_frame_bytes = 0",
                "transport.max_frame_bytes",
            ),
            (
                "max_frame_bytes = 16777216",
                "max_frame_bytes = 9223372036854775807",
                "transport.max_frame_bytes",
            ),
            ("queue = 4096", "queue = 0", "transport.queue"),
            (
                "queue = 4096",
                "queue = 9223372036854775807",
                "transport.queue",
            ),
            (
                "segment_bytes = 67108864",
                "segment_bytes = 0",
                "storage.segment_bytes",
            ),
            (
                "segment_bytes = 67108864",
                "segment_bytes = 9223372036854775807",
                "storage.segment_bytes",
            ),
            (
                "memory_log_bytes = 67108864",
                "memory_log_bytes = 0",
                "storage.memory_log_bytes",
            ),
            (
                "memory_log_bytes = 67108864",
                "memory_log_bytes = 18446744073709551615",
                "storage.memory_log_bytes",
            ),
            (
                "memory_log_bytes = 67108864",
                "memory_log_bytes = 100000",
                "storage.memory_log_bytes",
            ),
            (
                "# stall_timeout_ms = 900",
                "stall_timeout_ms = 299",
                "storage.stall_timeout_ms",
            ),
            (
                "# stall_timeout_ms = 900",
                "stall_timeout_ms = 86400001",
                "storage.stall_timeout_ms",
            ),
            (
                "# listen = \"127.0.0.1:9100\"",
                "listen = \"224.0.0.1:9100\"",
                "metrics.listen",
            ),
        ];
        for (from, to, key) in cases {
            assert!(EXAMPLE.contains(from), "the example has no {from:?}");
            let text = EXAMPLE.replacen(from, to, 1);
            let m = problems(&text).unwrap_or_else(|| panic!("{to:?} was accepted"));
            assert!(m.contains(key), "{to:?}: {m}");
        }
    }

    #[test]
    fn legitimate_variants_are_accepted() {
        for (from, to) in [
            // Listening on every address of the host, on the port the others dial.
            ("listen = \"127.0.0.1:7001\"", "listen = \"0.0.0.0:7001\""),
            ("listen = \"127.0.0.1:7001\"", "listen = \"[::]:7001\""),
            // A node that joins later as a learner: not among the initial voters.
            ("# voters = [1, 2, 3]", "voters = [2, 3]"),
            // The smallest values that make sense.
            ("tick_ms = 1", "tick_ms = 25"),
            ("segment_bytes = 67108864", "segment_bytes = 1024"),
            ("memory_log_bytes = 67108864", "memory_log_bytes = 4194304"),
            ("max_entry_bytes = 1048576", "max_entry_bytes = 1"),
            ("# stall_timeout_ms = 900", "stall_timeout_ms = 300"),
            ("# listen = \"127.0.0.1:9100\"", "listen = \"0.0.0.0:9100\""),
            ("# listen = \"127.0.0.1:9100\"", "listen = \"[::1]:0\""),
        ] {
            let text = EXAMPLE.replacen(from, to, 1);
            assert_eq!(problems(&text), None, "{to:?}");
        }
        // A cluster of one node, with no [[peers]] at all.
        let alone = EXAMPLE[..EXAMPLE.find("\n[[peers]]").unwrap()].to_string()
            + &EXAMPLE[EXAMPLE.find("\n[tls]").unwrap()..];
        let cfg = NodeConfig::parse(&alone, Path::new("/base")).unwrap();
        assert_eq!(cfg.voters(), vec![1]);
        assert_eq!(cfg.advertised(), None);
    }

    /// A metrics address that is no address is a parse error naming the key and line.
    #[test]
    fn a_metrics_address_that_is_no_address_is_refused() {
        for bad in [
            "\"localhost\"",
            "\"127.0.0.1\"",
            "\"127.0.0.1:99999\"",
            "9100",
            "\"\"",
        ] {
            let text = EXAMPLE.replacen(
                "# listen = \"127.0.0.1:9100\"",
                &format!("listen = {bad}"),
                1,
            );
            match NodeConfig::parse(&text, Path::new("/base")) {
                Err(ConfigError::Parse { message, .. }) => {
                    assert!(message.contains("listen"), "{bad}: {message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let cfg = NodeConfig::parse(EXAMPLE, Path::new("/base")).unwrap();
        assert_eq!(cfg.metrics.listen, None, "off unless asked for");
        assert_eq!(cfg.stall_timeout(), Duration::from_millis(900));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = EXAMPLE
            .replace("segment_bytes = 67108864", "segment_bytes = 0")
            .replace("max_entry_bytes = 1048576", "max_entry_bytes = 0");
        let m = problems(&text).unwrap();
        assert!(m.starts_with("2 problems"), "{m}");
        assert!(
            m.contains("storage.segment_bytes") && m.contains("raft.max_entry_bytes"),
            "{m}"
        );
    }

    /// The largest values accepted turn into ticks and durations without overflow.
    #[test]
    fn the_largest_accepted_values_convert_without_overflow() {
        let text = EXAMPLE
            .replace("tick_ms = 1", &format!("tick_ms = {MAX_TICK_MS}"))
            .replace(
                "election_timeout_ms = 300",
                &format!("election_timeout_ms = {MAX_MS}"),
            )
            .replace(
                "heartbeat_ms = 50",
                &format!("heartbeat_ms = {}", MAX_MS - MAX_TICK_MS),
            )
            .replace(
                "keep_alive_ms = 500",
                &format!("keep_alive_ms = {}", MAX_MS - 1),
            )
            .replace(
                "idle_timeout_ms = 3000",
                &format!("idle_timeout_ms = {MAX_MS}"),
            )
            .replace(
                "reconnect_min_ms = 50",
                &format!("reconnect_min_ms = {MAX_MS}"),
            )
            .replace(
                "reconnect_max_ms = 2000",
                &format!("reconnect_max_ms = {MAX_MS}"),
            );
        let cfg = NodeConfig::parse(&text, Path::new("/base")).unwrap();
        let core = cfg.raft_config(0);
        assert!(core.validate().is_ok());
        assert!(core.heartbeat_ticks < core.election_ticks);
        assert!(quinn::IdleTimeout::try_from(cfg.quic().idle_timeout).is_ok());
        let t = cfg.transport_settings();
        assert!(t.reconnect_max.checked_mul(2).is_some());
    }
}
