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

use crate::tls::QuicSettings;
use crate::transport::{TransportSettings, DECODE_ENTRIES};
use coracle::NodeId;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
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
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: 1,
            election_timeout_ms: 300,
            heartbeat_ms: 50,
            pre_vote: true,
            check_quorum: true,
            max_entries_per_message: 256,
            max_bytes_per_message: 1 << 20,
            max_inflight: 8,
            max_uncommitted_entries: 8192,
            max_entry_bytes: 1 << 20,
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
    /// entries, not the whole snapshot).
    pub snapshot_keep_entries: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            segment_bytes: 64 << 20,
            preallocate: true,
            max_log_bytes: None,
            snapshot_entries: 100_000,
            snapshot_keep_entries: 10_000,
        }
    }
}

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
            other => other,
        })
    }

    /// Parses and checks configuration text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        for p in [
            &mut cfg.data_dir,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut ids: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return bad("a peer id appears twice in [[peers]]".into());
        }
        let voters = self.voters();
        if voters.is_empty() {
            return bad("no voters".into());
        }
        if voters.len() > 7 {
            return bad("at most 7 members are supported by this build".into());
        }
        let r = &self.raft;
        if r.tick_ms == 0 {
            return bad("raft.tick_ms must be at least 1".into());
        }
        if r.heartbeat_ms < r.tick_ms || r.heartbeat_ms >= r.election_timeout_ms {
            return bad(
                "raft.heartbeat_ms must be at least one tick and below raft.election_timeout_ms"
                    .into(),
            );
        }
        if r.max_entries_per_message == 0 || r.max_entries_per_message > DECODE_ENTRIES {
            return bad(format!(
                "raft.max_entries_per_message must be in 1..={DECODE_ENTRIES}"
            ));
        }
        if r.max_bytes_per_message + 4096 > self.transport.max_frame_bytes {
            return bad(
                "transport.max_frame_bytes must exceed raft.max_bytes_per_message by 4 KiB".into(),
            );
        }
        if self.transport.idle_timeout_ms <= self.transport.keep_alive_ms {
            return bad("transport.idle_timeout_ms must exceed transport.keep_alive_ms".into());
        }
        if self.transport.queue == 0 || self.transport.reconnect_min_ms == 0 {
            return bad("transport.queue and transport.reconnect_min_ms must be positive".into());
        }
        self.validate_storage()
    }

    /// `[storage]` against what the log needs: a quota compaction can get under.
    fn validate_storage(&self) -> Result<(), ConfigError> {
        let Err(crate::storage::FileLogError::QuotaTooSmall {
            limit,
            least,
            largest_segment_bytes,
            ..
        }) = self.log_options().check()
        else {
            return Ok(());
        };
        let instead = match largest_segment_bytes {
            Some(s) => format!(", or storage.segment_bytes to at most {s}"),
            None if limit >= crate::storage::MIN_LOG_BYTES => {
                ", or lower storage.segment_bytes and raft.max_entry_bytes".into()
            }
            None => String::new(),
        };
        Err(ConfigError::Invalid(format!(
            "storage.max_log_bytes = {limit} is too small for storage.segment_bytes = {} and \
             raft.max_entry_bytes = {}: compaction deletes whole segments and never the one \
             being written (up to a segment plus one entry), so the log could stay full and \
             refuse every write for good. Set storage.max_log_bytes to at least {least}{instead}",
            self.storage.segment_bytes, self.raft.max_entry_bytes
        )))
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
            .keep_behind_snapshot(self.storage.snapshot_keep_entries)
            .member(self.cluster_id, self.id)
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

    /// The core's configuration.
    pub fn raft_config(&self, applied: coracle::Index) -> coracle::Config {
        let r = &self.raft;
        let ticks = |ms: u64| (ms / r.tick_ms).clamp(1, u32::MAX as u64) as u32;
        let mut c = coracle::Config::new(self.id, seed(self.id));
        c.election_ticks = ticks(r.election_timeout_ms).max(2);
        c.heartbeat_ticks = ticks(r.heartbeat_ms).min(c.election_ticks - 1);
        c.retransmit_ticks = (c.heartbeat_ticks * 2).max(1);
        c.pre_vote = r.pre_vote;
        c.check_quorum = r.check_quorum;
        c.max_entries_per_message = r.max_entries_per_message;
        c.max_bytes_per_message = r.max_bytes_per_message;
        c.max_inflight = r.max_inflight.clamp(1, crate::server::INFLIGHT);
        c.max_uncommitted_entries = r.max_uncommitted_entries;
        c.max_entry_bytes = r.max_entry_bytes;
        c.max_snapshot_chunk_bytes = (r.max_bytes_per_message / 2).max(1024);
        c.lease_drift_ticks = (c.election_ticks / 10).max(1);
        c.applied = applied;
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
}
