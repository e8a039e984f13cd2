//! The knobs of a node, all in ticks and counts: the core has no clock of its own.

use crate::types::{Index, NodeId};
use core::fmt;

/// How a node behaves. Build one with [`Config::new`] and change fields as needed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Seed of the node's pseudo-random generator (election jitter). Give each node a
    /// different seed; a simulation replays exactly with the same seeds.
    pub seed: u64,
    /// The minimum election timeout `T` in ticks. A follower that hears nothing from a leader
    /// campaigns after a random timeout in `[T, 2T)` (see `election_jitter_percent`); a leader with check-quorum steps down if
    /// it has not heard from a quorum within `T`.
    pub election_ticks: u32,
    /// How far above `T` the random election timeout may fall, in per cent of `T`: the
    /// timeout is drawn from `[T, T + T * election_jitter_percent / 100)` (at least one tick
    /// wide). 100, the default, is the paper's `[T, 2T)`. A narrower spread elects sooner
    /// after a leader dies (with two voters left, the first timeout fires at 1.68 T at the
    /// 90th percentile with 100 %, at 1.34 T with 50 %), at a higher risk of split votes
    /// when the spread nears the time a vote round takes (the paper's Figure 16). The
    /// minimum, `T`, and so lease reads and check-quorum, do not change. From 1 to 100.
    pub election_jitter_percent: u8,
    /// Ticks between two heartbeats of a leader. Must be below `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Ticks without acknowledgement after which a leader resends what it pipelined to a peer.
    pub retransmit_ticks: u32,
    /// Run a pre-vote round before raising the term (thesis 9.6). On by default.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election timeout
    /// (thesis 6.2). On by default.
    pub check_quorum: bool,
    /// AppendEntries messages in flight to one peer (pipelining window), at most the node's
    /// `INFLIGHT` capacity.
    pub max_inflight: usize,
    /// Entries in one AppendEntries message.
    pub max_entries_per_message: usize,
    /// Approximate bytes of entries in one AppendEntries message (at least one entry is
    /// always sent). A datagram binding sets this to fit its MTU.
    pub max_bytes_per_message: usize,
    /// The size of the chunks a snapshot is sent in, in bytes (one InstallSnapshot each;
    /// the last may be shorter). Up to `max_inflight` chunks are in flight to a follower.
    pub max_snapshot_chunk_bytes: usize,
    /// The largest command a proposal may carry, in bytes.
    pub max_entry_bytes: usize,
    /// Proposals are refused with [`ProposeError::Busy`](crate::ProposeError::Busy) while this
    /// many entries are appended but not committed (back-pressure).
    pub max_uncommitted_entries: u64,
    /// Clock-drift margin of lease reads, in ticks: the lease lasts
    /// `election_ticks - lease_drift_ticks` from the start of the heartbeat round a quorum
    /// answered. Raise it if clocks may drift apart more.
    pub lease_drift_ticks: u32,
    /// Election priority (the bully algorithm's rank, inside Raft): a node outranked by `k`
    /// voters waits `k * election_ticks / 2` more ticks before campaigning, and a leader
    /// hands leadership to a caught-up voter of higher priority. Priorities of the other
    /// members are set with [`Node::set_priority`](crate::Node::set_priority). Safety never
    /// depends on them: votes still follow the election restriction. 0 for all (the
    /// default) changes nothing.
    pub priority: u8,
    /// Leave a joint configuration as soon as it commits (otherwise wait for
    /// `MembershipChange::LeaveJoint`). On by default.
    pub auto_leave_joint: bool,
    /// The index the host's state machine has applied (after a restart): entries up to it are
    /// not handed out again.
    pub applied: Index,
    /// Entries kept in the log behind a snapshot taken with
    /// [`Node::snapshot_taken`](crate::Node::snapshot_taken), so a follower a little behind
    /// gets entries rather than the whole snapshot.
    pub keep_entries_behind_snapshot: u64,
}

impl Config {
    /// A configuration with the defaults: election timeout 10 ticks, heartbeat every tick,
    /// pre-vote and check-quorum on, 8 messages in flight, 64 entries or 64 KiB per message.
    pub const fn new(id: NodeId, seed: u64) -> Self {
        Config {
            id,
            seed,
            election_ticks: 10,
            election_jitter_percent: 100,
            heartbeat_ticks: 1,
            retransmit_ticks: 5,
            pre_vote: true,
            check_quorum: true,
            max_inflight: 8,
            max_entries_per_message: 64,
            max_bytes_per_message: 64 * 1024,
            max_entry_bytes: 64 * 1024,
            max_snapshot_chunk_bytes: 64 * 1024,
            max_uncommitted_entries: 4096,
            lease_drift_ticks: 2,
            auto_leave_joint: true,
            priority: 0,
            applied: 0,
            keep_entries_behind_snapshot: 0,
        }
    }

    /// Checks the fields against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.election_ticks < 2 {
            return Err(ConfigError::ElectionTimeoutTooShort);
        }
        if self.election_jitter_percent == 0 || self.election_jitter_percent > 100 {
            return Err(ConfigError::ElectionJitterOutOfRange);
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(ConfigError::HeartbeatNotBelowElection);
        }
        if self.retransmit_ticks == 0 {
            return Err(ConfigError::ZeroRetransmit);
        }
        if self.max_inflight == 0
            || self.max_entries_per_message == 0
            || self.max_snapshot_chunk_bytes == 0
        {
            return Err(ConfigError::ZeroWindow);
        }
        if self.max_uncommitted_entries == 0 {
            return Err(ConfigError::ZeroUncommitted);
        }
        Ok(())
    }
}

/// A configuration or construction that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// `election_ticks` must be at least 2.
    ElectionTimeoutTooShort,
    /// `election_jitter_percent` must be from 1 to 100.
    ElectionJitterOutOfRange,
    /// `heartbeat_ticks` must be at least 1 and below `election_ticks`.
    HeartbeatNotBelowElection,
    /// `retransmit_ticks` must be at least 1.
    ZeroRetransmit,
    /// `max_inflight`, `max_entries_per_message` and `max_snapshot_chunk_bytes` must be at
    /// least 1.
    ZeroWindow,
    /// `max_uncommitted_entries` must be at least 1.
    ZeroUncommitted,
    /// The member list has duplicates, or exceeds the node's peer capacity.
    BadMembers,
    /// `applied` is beyond the last index of the log.
    AppliedBeyondLog,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::ElectionTimeoutTooShort => "election_ticks must be at least 2",
            ConfigError::ElectionJitterOutOfRange => "election_jitter_percent must be 1 to 100",
            ConfigError::HeartbeatNotBelowElection => {
                "heartbeat_ticks must be at least 1 and below election_ticks"
            }
            ConfigError::ZeroRetransmit => "retransmit_ticks must be at least 1",
            ConfigError::ZeroWindow => {
                "max_inflight and max_entries_per_message must be at least 1"
            }
            ConfigError::ZeroUncommitted => "max_uncommitted_entries must be at least 1",
            ConfigError::BadMembers => {
                "members must be without duplicates and within the peer capacity"
            }
            ConfigError::AppliedBeyondLog => "applied index is beyond the last index of the log",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}
