//! The node: its state, the inputs it takes and the outputs it gives.
//!
//! The run loop of a host, in six steps:
//! 1. feed one input: [`Node::step`] (a message), [`Node::advance`] (ticks),
//!    [`Node::propose`], [`Node::read`], a membership change or transfer, or a report from
//!    the host ([`Node::persisted`], [`Node::fetched`], [`Node::snapshot_taken`],
//!    [`Node::report_unreachable`]);
//! 2. drain [`Node::poll_output`] until it returns `None`;
//! 3. hand every [`Output::Persist`] batch to the durable store (now, or on another thread)
//!    and call [`Node::persisted`] with its token once it is durable (one flush for many
//!    batches); read back what [`Output::Fetch`] asks for and hand it in with
//!    [`Node::fetched`];
//! 4. send every [`Output::Send`], and every [`Output::SendSnapshot`] with the chunk read
//!    from the kept snapshot;
//! 5. apply every [`Output::Apply`] to the state machine, in order; serve
//!    [`Output::ReadReady`]; restore on [`Output::RestoreSnapshot`];
//! 6. sleep until a message or a report arrives or [`Node::ticks_until_deadline`] ticks
//!    have passed.

use crate::config::{Config, ConfigError};
use crate::durability::{Durability, Gated, Persist, SyncToken};
use crate::election::Campaign;
use crate::log_macros::info;
use crate::membership::Membership;
use crate::message::{
    AppendEntries, AppendEntriesResponse, Entries, InstallSnapshot, InstallSnapshotResponse,
    Message, ReadIndex, ReadIndexResponse, RequestVote, RequestVoteResponse, TimeoutNow,
};
use crate::progress::{Progress, ProgressState, Replication};
use crate::read::Reads;
use crate::rng::Rng;
use crate::snapshot::SnapshotTransfer;
use crate::storage::{LogStorage, StorageError};
use crate::transfer::Transfer;
use crate::types::{Entry, EntryKind, HardState, Index, NodeId, Role, Term};
use core::cmp::Reverse;
use core::fmt;

/// One Raft server, driven by its host.
///
/// `S` is the log storage; `N` the most *other* members the node can know (its peer
/// capacity); `I` the capacity of the pipelining window per peer; `R` the most reads
/// pending at once. All memory is inside the value: no allocation happens after
/// construction.
///
/// See the [crate documentation](crate) for a complete event loop.
pub struct Node<S: LogStorage, const N: usize = 6, const I: usize = 8, const R: usize = 16> {
    pub(crate) cfg: Config,
    /// The node's memory of its log, hard state and kept snapshot.
    pub(crate) log: S,
    /// `currentTerm` (Figure 2, persistent).
    pub(crate) current_term: Term,
    /// `votedFor` (Figure 2, persistent).
    pub(crate) voted_for: Option<NodeId>,
    pub(crate) role: Role,
    /// The leader of `current_term`, once known.
    pub(crate) leader: Option<NodeId>,
    /// `commitIndex` (Figure 2, volatile).
    pub(crate) commit_index: Index,
    /// `lastApplied` (Figure 2, volatile): the last index handed out with
    /// [`Output::Apply`] or covered by [`Output::RestoreSnapshot`].
    pub(crate) applied: Index,
    /// This node's place in the configuration in use.
    pub(crate) membership: Membership<N>,
    /// Every other member (and strangers answered for a while), with what this node keeps
    /// about each: its role in the configuration, replication progress, votes, pending
    /// answers.
    pub(crate) peers: heapless::Vec<Peer<I>, N>,
    pub(crate) timers: Timers,
    pub(crate) rng: Rng,
    pub(crate) campaign: Campaign,
    pub(crate) reads: Reads<R>,
    pub(crate) transfer: Option<Transfer>,
    pub(crate) snapshots: SnapshotTransfer,
    pub(crate) durability: Durability,
    pub(crate) fetch: Fetch,
    /// The last index the memory log was told it may drop ([`LogStorage::release`]).
    released: Index,
    pub(crate) outbox: Outbox,
    pub(crate) counters: Counters,
}

/// The clock of the node, in ticks, and the deadlines it keeps.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timers {
    /// Ticks received so far.
    pub now: u64,
    /// Follower and candidate: when to campaign.
    pub election_deadline: u64,
    /// Leader: when to send the next heartbeats.
    pub heartbeat_deadline: u64,
    /// Leader with check-quorum: when to check that a quorum was heard from.
    pub quorum_deadline: u64,
    /// Tick at which the current leader was last heard from.
    pub leader_contact: Option<u64>,
    /// A restarted node ignores vote requests until this tick (lease safety).
    pub vote_guard_until: u64,
}

/// What the node has announced and where its round-robin over peers stands.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outbox {
    /// Role, term and leader as last announced with [`Output::StateChanged`].
    announced: StateChange,
    /// The peer to look at first for the next message.
    cursor: usize,
    /// The last poll found nothing to hand out and no input came since, so the next one
    /// finds nothing either: a host that polls until `None` after every input pays for
    /// the full look once. Every input clears it ([`Outbox::wake`]).
    quiet: bool,
    /// Peers (bit `i` for `peers[i]`, the first 64) found with nothing to send since the
    /// last input: the outputs that follow one input (a batch's applies, say) do not look
    /// at them again. Taking outputs never gives a peer something to send; inputs do.
    idle_peers: u64,
}

impl Outbox {
    /// An input arrived: anything may be ready again.
    pub(crate) fn wake(&mut self) {
        self.quiet = false;
        self.idle_peers = 0;
    }

    fn is_idle(&self, peer: usize) -> bool {
        peer < 64 && self.idle_peers & (1 << peer) != 0
    }

    fn set_idle(&mut self, peer: usize) {
        if peer < 64 {
            self.idle_peers |= 1 << peer;
        }
    }
}

/// Entries whose data the memory log lacks, asked of the host ([`Output::Fetch`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fetch {
    /// To ask for at the next [`Node::poll_output`].
    wanted: Option<(Index, Index)>,
    /// Whom `wanted` is for: among those who need entries read back while no fetch is
    /// under way, the first by [`Reader`]'s order gets the fetch.
    wanted_for: Reader,
    /// Asked for; no answer yet.
    in_flight: bool,
    /// The range asked for last.
    asked: (Index, Index),
    /// The most entries to ask for at once (0: a pipeline's worth): as many as the memory
    /// log kept of an answer it could not hold whole. A bounded log keeps a window of what
    /// it is handed, the newest entries, so the rest of a larger answer is lost, and the
    /// first entries, the ones needed first, with it.
    span: u64,
    /// The tick of the last failed fetch: the next is asked only once time has passed.
    failed_at: Option<u64>,
    /// The index the answer is to hand in next.
    next: Index,
}

/// Who needs entries read back, in the order a fetch serves them: the greatest first.
///
/// A fetch reads what one follower needs next (a memory log may hold no more than that),
/// and followers at the same `nextIndex` share it. The commit rule (§5.3) waits for a
/// majority of voters: the voters it waits for go first, and among them, as among the
/// other followers, the one furthest behind, so that those ahead of it wait while it
/// catches up with them, and from then on every read serves them all. Reads spread over
/// every follower behind would serve one follower each: a majority would hold the log
/// again only once nearly all had caught up. The node's own state machine asks only when
/// no follower does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reader {
    /// The node applying committed entries.
    #[default]
    Apply,
    /// A follower the commit index does not wait for: a learner, or a voter while the
    /// leader and the voters with a higher `nextIndex` make up a majority. By `nextIndex`:
    /// the lowest first.
    Follower(Reverse<Index>),
    /// A voter the commit index waits for: the leader and the voters with a higher
    /// `nextIndex` make up no majority without it. By `nextIndex`: the lowest first.
    Majority(Reverse<Index>),
}

/// Everything the node keeps about one other member.
#[derive(Clone, Debug)]
pub(crate) struct Peer<const I: usize> {
    pub id: NodeId,
    /// Voter of the configuration in use (of its new half while joint).
    pub voter: bool,
    /// Voter of the old configuration while joint.
    pub voter_outgoing: bool,
    pub learner: bool,
    /// Leader: `nextIndex`, `matchIndex` and the pipeline to it.
    pub replication: Replication<I>,
    /// The answer to this node's (pre-)vote request in the current campaign.
    pub vote: Option<bool>,
    /// Candidate: its vote request is still to be sent.
    pub send_request_vote: bool,
    /// Leader: a heartbeat is due.
    pub send_heartbeat: bool,
    /// Leader: TimeoutNow is due (leadership transfer).
    pub send_timeout_now: bool,
    /// Answers waiting for the batch they depend on to be durable (at most one of each
    /// kind: a newer one replaces or merges with the older).
    pub vote_response: Option<Gated<RequestVoteResponse>>,
    pub append_response: Option<Gated<AppendEntriesResponse>>,
    pub snapshot_response: Option<Gated<InstallSnapshotResponse>>,
    /// Newest heartbeat round this peer answered in the current term.
    pub acked_round: u64,
    /// Its election priority.
    pub priority: u8,
}

/// Role, term and leader as last announced with [`Output::StateChanged`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StateChange {
    /// The node's role.
    pub role: Role,
    /// The node's current term.
    pub term: Term,
    /// The leader the node knows of in this term.
    pub leader: Option<NodeId>,
}

/// What the node asks of its host. Drain them with [`Node::poll_output`] after every input.
///
/// Exhaustive on purpose: every kind but [`Output::StateChanged`] asks the host to act, and
/// a host that silently dropped a kind it did not know (a write, a fetch, a snapshot chunk
/// to send) would break the protocol without a word. A new kind is a breaking change, so
/// every host's `match` has to say what it does with it.
#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Output<'a> {
    /// The role, term or leader changed.
    StateChanged(StateChange),
    /// Writes for the durable store: perform them in order (see [`Persist`]), then call
    /// [`Node::persisted`] with the batch's token once they are durable. Batches may be
    /// made durable together; the latest token covers every earlier batch.
    Persist(Persist<'a>),
    /// Read the entries `from..=to` back from the durable store (their data is not in
    /// memory) and hand them in with [`Node::fetched`] (a prefix is fine), or call
    /// [`Node::fetch_failed`]. One fetch is asked at a time.
    Fetch {
        /// First index wanted.
        from: Index,
        /// Last index wanted.
        to: Index,
    },
    /// Send `message` to node `to`. Losing it is fine: the protocol retries.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message; AppendEntries borrows its entries from the node's log.
        message: Message<'a>,
    },
    /// Send node `to` a chunk of the kept snapshot: read up to `max_len` bytes of the
    /// snapshot at `message.last_included_index` from `message.offset` into
    /// `message.data`, set `message.done` if they reach its end, and send the message. A
    /// chunk past the end is not sent. If the store no longer holds that snapshot, send
    /// nothing: the node starts over with the snapshot it knows of.
    SendSnapshot {
        /// The receiver.
        to: NodeId,
        /// Everything but the bytes.
        message: InstallSnapshot<'a>,
        /// The most bytes the chunk may carry.
        max_len: usize,
    },
    /// This entry is committed: apply it to the state machine. Entries come in index order,
    /// each once. No-op entries come too, so the host can track the applied index.
    Apply(Entry<'a>),
    /// The read `id` ([`Node::read`]) may be served from the state machine now: it has
    /// applied through `index`, which covers every write committed before the read began.
    ReadReady {
        /// The host's id of the read.
        id: u64,
        /// The read index.
        index: Index,
    },
    /// The read `id` could not be confirmed (leadership changed or was lost): retry.
    ReadFailed {
        /// The host's id of the read.
        id: u64,
    },
    /// The kept snapshot is ahead of the state machine (installed from the leader, and
    /// durable; or found at a restart): restore the state machine from it. Entries after
    /// it follow as [`Output::Apply`].
    RestoreSnapshot {
        /// The snapshot's last included index: the state machine's applied index after it.
        index: Index,
        /// Its term.
        term: Term,
    },
    /// The memory log is full: take a snapshot at the applied index
    /// ([`Node::snapshot_taken`]) so the log can be compacted.
    SnapshotNeeded,
}

/// Why a proposal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ProposeError {
    /// Only the leader takes proposals; `leader` is the one this node knows of, if any, so a
    /// host can redirect or forward.
    NotLeader {
        /// The known leader.
        leader: Option<NodeId>,
    },
    /// The command is larger than `Config::max_entry_bytes`.
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many entries are waiting to commit (`Config::max_uncommitted_entries`): retry
    /// once some commit.
    Busy,
    /// The log storage refused the entry (full: compact it; or failed).
    Storage(StorageError),
    /// Leadership is being handed to another node; retry there once it leads.
    Transferring,
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(l) } => write!(f, "not the leader; node {l} is"),
            ProposeError::NotLeader { leader: None } => f.write_str("not the leader; none known"),
            ProposeError::TooLarge { len, max } => {
                write!(f, "command of {len} bytes exceeds the limit of {max}")
            }
            ProposeError::Busy => f.write_str("too many uncommitted entries; retry later"),
            ProposeError::Storage(e) => write!(f, "log storage: {e}"),
            ProposeError::Transferring => f.write_str("leadership transfer under way"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ProposeError {}

/// Where a proposal went in the log. It is committed when an [`Output::Apply`] with this
/// index and term comes out; another term at that index means it was lost to a new leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Proposal {
    /// Index assigned to the entry.
    pub index: Index,
    /// Term of the entry.
    pub term: Term,
}

/// Counts of inputs the node did not act on, and of other events worth watching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Counters {
    /// Messages with a term older than the node's, or answers to requests no longer pending.
    pub stale: u64,
    /// Messages from nodes that are not members (other than leader and candidate
    /// requests, which are answered).
    pub unknown_sender: u64,
    /// Messages that break the protocol (inconsistent indexes or terms, impossible answers).
    pub invalid: u64,
    /// Vote requests ignored because a live leader was heard from recently.
    pub ignored_in_lease: u64,
    /// Entries a follower could not store because its log was full.
    pub log_full: u64,
    /// Failures of the durable store the host reported ([`Node::persist_failed`]).
    pub storage_errors: u64,
    /// Fetches of entries whose data was not in memory ([`Output::Fetch`]).
    pub fetches: u64,
    /// Fetches the host could not serve ([`Node::fetch_failed`]).
    pub fetch_failures: u64,
    /// Times a leader fell back from streaming to probing a peer (rejection or timeout).
    pub retransmits: u64,
    /// Times a peer needed entries already compacted away (needs a snapshot).
    pub needs_snapshot: u64,
    /// Times this node stepped down from leader because it lost contact with a quorum.
    pub check_quorum_step_downs: u64,
    /// Leadership transfers that timed out.
    pub transfers_aborted: u64,
    /// Times a follower rejected an entry at or below its `matchIndex` (it lost entries it
    /// had acknowledged, or a late rejection overtook newer answers): the leader lowered
    /// `matchIndex` and probed it again.
    pub match_resets: u64,
    /// Elections this node started as a candidate (a new term; pre-votes not counted).
    pub elections_started: u64,
    /// Elections this node won (it became leader).
    pub elections_won: u64,
    /// Times this node stepped down from leader (or candidate) because the host reported
    /// its storage stalled ([`Node::set_storage_stalled`]).
    pub storage_stall_step_downs: u64,
}

/// Something to send, decided before borrowing the log to build it.
#[derive(Clone, Copy)]
pub(crate) enum Outgoing {
    RequestVote(RequestVote),
    VoteResponse(RequestVoteResponse),
    AppendResponse(AppendEntriesResponse),
    Append {
        prev_log_index: Index,
        prev_log_term: Term,
        leader_commit: Index,
        len: usize,
    },
    TimeoutNow(TimeoutNow),
    ReadIndex(ReadIndex),
    ReadIndexResponse(ReadIndexResponse),
    InstallSnapshot {
        offset: u64,
        max_len: usize,
    },
    InstallSnapshotResponse(InstallSnapshotResponse),
}

impl<S: LogStorage, const N: usize, const I: usize, const R: usize> Node<S, N, I, R> {
    /// A node that starts (or restarts) as a follower with the log and hard state in `log`.
    ///
    /// `members` lists every voting member, this node included if it votes. An empty list
    /// makes a node of no configuration yet: one joining a running cluster, which never
    /// campaigns and waits for a leader to add it (it follows a leader outside its
    /// configuration, thesis 4.1), its configuration then coming from the log or a
    /// snapshot. The host passes `config.applied` after a restart so applied entries are
    /// not handed out again.
    pub fn new(config: Config, log: S, members: &[NodeId]) -> Result<Self, ConfigError> {
        config.validate()?;
        let self_voter = members.contains(&config.id);
        let mut peers = heapless::Vec::new();
        let mut bootstrap = heapless::Vec::new();
        for (i, &id) in members.iter().enumerate() {
            if members[..i].contains(&id) {
                return Err(ConfigError::BadMembers);
            }
            if id != config.id {
                peers
                    .push(Peer::new(id, true))
                    .map_err(|_| ConfigError::BadMembers)?;
                let _ = bootstrap.push(id);
            }
        }
        let last = log.last_index();
        let restore = match log.snapshot_meta() {
            // The state machine is behind the snapshot: restore it first.
            Some(meta) if config.applied < meta.index => Some(meta),
            _ => None,
        };
        if config.applied > last || (config.applied + 1 < log.first_index() && restore.is_none()) {
            return Err(ConfigError::AppliedBeyondLog);
        }
        let HardState {
            current_term,
            voted_for,
        } = log.hard_state();
        let applied = config.applied;
        let vote_guard_until = if current_term > 0 {
            config.election_ticks as u64
        } else {
            0
        };
        let mut node = Node {
            rng: Rng::new(config.seed),
            cfg: config,
            log,
            current_term,
            voted_for,
            role: Role::Follower,
            leader: None,
            // A snapshot holds only committed entries.
            commit_index: restore.map_or(applied, |m| m.index.max(applied)),
            applied,
            membership: Membership::new(bootstrap, self_voter),
            peers,
            timers: Timers {
                vote_guard_until,
                ..Timers::default()
            },
            campaign: Campaign::default(),
            reads: Reads::new(),
            transfer: None,
            snapshots: SnapshotTransfer::default(),
            durability: Durability::new(last),
            fetch: Fetch::default(),
            released: 0,
            outbox: Outbox {
                announced: StateChange {
                    role: Role::Follower,
                    term: current_term,
                    leader: None,
                },
                cursor: 0,
                quiet: false,
                idle_peers: 0,
            },
            counters: Counters::default(),
        };
        node.snapshots.restore = restore.map(|meta| (meta, 0));
        node.load_config_from_log();
        node.reset_election_timer();
        Ok(node)
    }

    // ----- inputs -------------------------------------------------------------------------

    /// One tick of time passed.
    pub fn tick(&mut self) {
        self.advance(1);
    }

    /// `ticks` ticks of time passed. Equivalent to as many calls of [`Node::tick`], but a
    /// host that slept until [`Node::ticks_until_deadline`] can call it once.
    pub fn advance(&mut self, ticks: u64) {
        self.outbox.wake();
        let target = self.timers.now.saturating_add(ticks);
        loop {
            let deadline = self.next_deadline();
            if deadline > target {
                break;
            }
            self.timers.now = deadline;
            self.on_deadline();
        }
        self.timers.now = target;
        if ticks > 0 {
            self.allow_probes();
        }
        self.expire_forwarded_reads();
        self.abort_transfer_if_due();
        self.debug_check();
    }

    /// A message arrived from node `from`. Messages with stale terms or that break the
    /// protocol are counted in [`Node::counters`] and otherwise ignored or answered with a
    /// rejection; nothing here panics. A node outside the configuration is answered when it
    /// acts as a leader or candidate (thesis 4.1: this node may lack the entry that added
    /// it); anything else it sends is dropped.
    pub fn step(&mut self, from: NodeId, message: Message<'_>) {
        self.outbox.wake();
        let vote_request = matches!(message, Message::RequestVote(_)) && from != self.cfg.id;
        if self.peer_index(from).is_none()
            && !vote_request
            && !self.admit_unknown_leader(from, &message)
        {
            self.counters.unknown_sender += 1;
            return;
        }
        let term = message.term();
        if term > self.current_term {
            match message {
                Message::RequestVote(m) if !m.leadership_transfer && self.in_lease() => {
                    // Leader stickiness (thesis 4.2.3): a node that hears from a live leader
                    // does not let a disruptive candidate raise its term.
                    self.counters.ignored_in_lease += 1;
                    return;
                }
                Message::RequestVote(RequestVote { pre_vote: true, .. }) => {}
                Message::RequestVoteResponse(RequestVoteResponse {
                    pre_vote: true,
                    vote_granted: true,
                    ..
                }) => {}
                Message::AppendEntries(_) | Message::InstallSnapshot(_) => {
                    self.become_follower(term, Some(from))
                }
                _ => self.become_follower(term, None),
            }
        } else if term < self.current_term {
            if self.peer_index(from).is_none() {
                self.counters.unknown_sender += 1;
                return;
            }
            self.counters.stale += 1;
            self.answer_stale(from, &message);
            return;
        }
        // A change of role may have forgotten a peer that is no member.
        let peer = match self.peer_index(from) {
            Some(peer) => peer,
            None if vote_request && self.role != Role::Leader => match self.admit_stranger(from) {
                Some(peer) => peer,
                None => {
                    self.counters.unknown_sender += 1;
                    return;
                }
            },
            None => {
                self.counters.unknown_sender += 1;
                return;
            }
        };
        match message {
            Message::RequestVote(m) => self.on_request_vote(peer, m),
            Message::RequestVoteResponse(m) => self.on_request_vote_response(peer, m),
            Message::AppendEntries(m) => self.on_append_entries(peer, &m),
            Message::AppendEntriesResponse(m) => self.on_append_entries_response(peer, m),
            Message::TimeoutNow(_) => self.on_timeout_now(peer),
            Message::ReadIndex(m) => self.on_read_index(peer, m),
            Message::ReadIndexResponse(m) => self.on_read_index_response(m),
            Message::InstallSnapshot(m) => self.on_install_snapshot(peer, &m),
            Message::InstallSnapshotResponse(m) => self.on_install_snapshot_response(peer, m),
        }
        self.debug_check();
    }

    /// The host made the [`Output::Persist`] batch of `token` (and every batch before it)
    /// durable.
    pub fn persisted(&mut self, token: SyncToken) {
        self.outbox.wake();
        self.durability.synced(token);
        match self.role {
            Role::Leader => self.advance_commit_index(),
            Role::Candidate => self.count_votes(),
            _ => {}
        }
        self.debug_check();
    }

    /// The host could not make a batch durable (a write or a flush failed): from now on the
    /// node acknowledges nothing, grants no vote and applies nothing more
    /// ([`Node::storage_failed`]); what was acknowledged before stays true. Restart the
    /// node on a healthy store.
    pub fn persist_failed(&mut self) {
        self.outbox.wake();
        self.counters.storage_errors += 1;
        self.durability.failed = true;
    }

    /// The host reports whether a flush of the durable store has been running for too long
    /// (a disk that hangs). Figure 2 asks a server to persist its term, vote and log
    /// "before responding to RPCs", so a node whose flush does not return can acknowledge
    /// nothing, grant no vote and, as leader, never count itself in a commit quorum. While
    /// stalled, the node steps down if it leads (or campaigns), starts no election, ignores
    /// a leadership transfer to it and grants no vote or pre-vote, so the other members
    /// elect a leader among themselves and the cluster stays available. It still follows a
    /// leader and stores what it is sent; its answers leave once its writes are durable.
    /// Once the host reports the disk answering again (`false`), it may stand again after a
    /// fresh election timeout.
    pub fn set_storage_stalled(&mut self, stalled: bool) {
        self.outbox.wake();
        if stalled == self.durability.stalled {
            return;
        }
        self.durability.stalled = stalled;
        if stalled {
            if self.role != Role::Follower {
                self.counters.storage_stall_step_downs += 1;
                self.become_follower(self.current_term, None);
            }
            debug_assert!(self.role == Role::Follower, "a stalled node never leads");
        } else {
            self.reset_election_timer();
        }
        self.debug_check();
    }

    /// The entries asked for with [`Output::Fetch`], read back from the durable store (all
    /// of them or a prefix; consecutive), all at once or in several calls in order (a host
    /// that reads one entry at a time may hand each in). Those the memory log has room for
    /// are kept, and the node goes on sending and applying. Nothing handed in counts as a
    /// failed fetch.
    pub fn fetched<'e>(&mut self, entries: impl IntoIterator<Item = Entry<'e>>) {
        self.outbox.wake();
        self.fetch.in_flight = false;
        let (from, to) = self.fetch.asked;
        let mut handed = 0;
        for entry in entries {
            // Only the next entry of the answer counts; once one did not fit, none does.
            if entry.index != self.fetch.next {
                break;
            }
            if entry.index == from {
                // The start of an answer: what earlier fetches read is not needed now.
                self.log.clear_fetched();
            }
            if self.log.insert_fetched(&entry).is_err() {
                if entry.index != from {
                    self.fetch.next = Index::MAX;
                }
                break;
            }
            self.fetch.next += 1;
            handed += 1;
        }
        if self.fetch.next == from {
            // Nothing of the answer was handed in (or nothing fit).
            self.fetch_failed();
            return;
        }
        let kept = (from..=to).filter(|&i| self.log.entry(i).is_some()).count() as u64;
        if kept < handed {
            self.fetch.span = kept.max(1);
        }
    }

    /// The host could not read back what [`Output::Fetch`] asked for. The node asks again
    /// once time has passed (at its next tick: never in the same drain, so a host whose
    /// store fails at once does not loop), and a follower that needs compacted entries gets
    /// the snapshot instead.
    pub fn fetch_failed(&mut self) {
        self.outbox.wake();
        self.fetch.in_flight = false;
        self.fetch.failed_at = Some(self.timers.now);
        self.counters.fetch_failures += 1;
    }

    /// Appends a command to the log if this node is the leader.
    pub fn propose(&mut self, command: &[u8]) -> Result<Proposal, ProposeError> {
        self.outbox.wake();
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::Transferring);
        }
        if command.len() > self.cfg.max_entry_bytes {
            return Err(ProposeError::TooLarge {
                len: command.len(),
                max: self.cfg.max_entry_bytes,
            });
        }
        if self.log.last_index() - self.commit_index >= self.cfg.max_uncommitted_entries {
            return Err(ProposeError::Busy);
        }
        let index = self
            .append_as_leader(EntryKind::Command, command)
            .map_err(ProposeError::Storage)?;
        Ok(Proposal {
            index,
            term: self.current_term,
        })
    }

    /// The host could not reach `peer` (a connection failed): a leader stops streaming to it
    /// and probes instead.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        self.outbox.wake();
        if let Some(i) = self.peer_index(peer) {
            let r = &mut self.peers[i].replication;
            if r.state == crate::ProgressState::Replicate {
                r.become_probe(r.match_index + 1);
            }
        }
    }

    /// Starts an election now instead of waiting for the timeout (with a pre-vote first if
    /// configured). Does nothing on a leader or a node that may not stand: a non-voter,
    /// unless a configuration entry not known to be committed left it out after it voted.
    pub fn campaign(&mut self) {
        self.outbox.wake();
        if self.role != Role::Leader && self.may_campaign() {
            self.start_election();
        }
    }

    /// Takes the node apart and returns its log storage (to restart it, or to inspect it).
    pub fn into_log(self) -> S {
        self.log
    }

    // ----- outputs ------------------------------------------------------------------------

    /// The next thing the host must do, or `None` when there is nothing left. Call it until
    /// it returns `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output<'_>> {
        if self.outbox.quiet {
            #[cfg(debug_assertions)]
            self.check_quiet();
            return None;
        }
        self.next_output()
    }

    /// A quiet outbox is right: looking again finds nothing (an input that forgot to
    /// clear [`Outbox::quiet`] would hold back what it made ready).
    #[cfg(debug_assertions)]
    fn check_quiet(&mut self) {
        self.outbox.wake();
        let idle = self.next_output().is_none();
        assert!(
            idle,
            "an output became ready without an input clearing the quiet outbox"
        );
    }

    fn next_output(&mut self) -> Option<Output<'_>> {
        let state = self.state_change();
        if state != self.outbox.announced {
            self.outbox.announced = state;
            return Some(Output::StateChanged(state));
        }
        if self.durability.has_batch() {
            return self.durability.take_batch(&self.log).map(Output::Persist);
        }
        if core::mem::take(&mut self.snapshots.needed) {
            return Some(Output::SnapshotNeeded);
        }
        if let Some((peer, outgoing)) = self.next_outgoing() {
            let to = self.peers[peer].id;
            return Some(self.build_output(to, outgoing));
        }
        if let Some(meta) = self.take_restore() {
            return Some(Output::RestoreSnapshot {
                index: meta.index,
                term: meta.term,
            });
        }
        let ready = self.commit_index.min(self.durability.durable_index);
        // Entries the kept snapshot covers come with its restore, not one by one.
        if self.applied < ready && self.applied >= self.log.first_index() - 1 {
            if self.log.entry(self.applied + 1).is_some() {
                self.applied += 1;
                debug_assert!(
                    self.applied <= self.commit_index
                        && self.applied <= self.durability.durable_index,
                    "an entry is applied only once committed and durable here"
                );
                return self.log.entry(self.applied).map(Output::Apply);
            }
            self.want_entries(self.applied + 1, Reader::Apply);
        }
        if let Some((from, to)) = self.fetch.wanted.take() {
            self.fetch.in_flight = true;
            self.fetch.asked = (from, to);
            self.fetch.next = from;
            self.counters.fetches += 1;
            return Some(Output::Fetch { from, to });
        }
        self.release_memory();
        let read = self.next_read_output();
        self.outbox.quiet = read.is_none();
        read
    }

    /// The memory log may drop the data of entries that are durable and applied.
    fn release_memory(&mut self) {
        let through = self.applied.min(self.durability.durable_index);
        if through > self.released {
            self.released = through;
            self.log.release(through);
        }
    }

    /// Entry `from` is needed by `reader` and its data is not in memory: ask the host for
    /// it and the missing ones after it (up to a pipeline's worth, or as many as the memory
    /// log could hold of an earlier answer), unless a fetch is under way or one is wanted
    /// for a reader that goes first.
    pub(crate) fn want_entries(&mut self, from: Index, reader: Reader) {
        if self.fetch.in_flight
            || self
                .fetch
                .wanted
                .is_some_and(|_| reader <= self.fetch.wanted_for)
            || from < self.log.first_index()
            || self.fetch.failed_at == Some(self.timers.now)
        {
            return;
        }
        let mut span = (self.cfg.max_entries_per_message * self.cfg.max_inflight.min(I)) as u64;
        if self.fetch.span > 0 {
            span = span.min(self.fetch.span);
        }
        let last = self.log.last_index();
        let mut to = from;
        while to < last && to + 1 < from + span && self.log.entry(to + 1).is_none() {
            to += 1;
        }
        self.fetch.wanted = Some((from, to));
        self.fetch.wanted_for = reader;
    }

    /// Ticks until the next timer (election timeout, heartbeat, quorum check) fires; 0 if it
    /// is due. A host can sleep that long unless a message arrives.
    pub fn ticks_until_deadline(&self) -> u64 {
        self.next_deadline().saturating_sub(self.timers.now)
    }

    // ----- observability ------------------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.current_term
    }
    /// The candidate voted for in the current term.
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }
    /// The leader known in the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Highest index known to be committed.
    pub fn commit_index(&self) -> Index {
        self.commit_index
    }
    /// Highest index handed out with [`Output::Apply`].
    pub fn applied_index(&self) -> Index {
        self.applied
    }
    /// Index of the last entry in the log.
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// Highest index of the log known to be durable.
    pub fn durable_index(&self) -> Index {
        self.durability.durable_index
    }
    /// Ticks received so far.
    pub fn now(&self) -> u64 {
        self.timers.now
    }
    /// Replication progress of `peer`, meaningful on a leader.
    pub fn progress(&self, peer: NodeId) -> Option<Progress> {
        self.peer_index(peer)
            .map(|i| self.peers[i].replication.view())
    }
    /// Lifts the guard a restarted node keeps for its first election timeout, during which
    /// it ignores vote requests of higher terms (it may have answered a leader whose lease
    /// is still running before it went down). Call it only if this node cannot have heard
    /// from a leader within the last election timeout: it was down for longer, or its state
    /// was built by hand.
    pub fn skip_vote_guard(&mut self) {
        self.outbox.wake();
        self.timers.vote_guard_until = 0;
    }

    /// Sets the election priority of member `peer` (see `Config::priority`), this node's
    /// own when `peer` is its id; a node not leading draws its election timeout again with
    /// the new ranks. Returns false if `peer` is not a member this node knows.
    pub fn set_priority(&mut self, peer: NodeId, priority: u8) -> bool {
        self.outbox.wake();
        if peer == self.cfg.id {
            self.cfg.priority = priority;
        } else {
            let Some(i) = self.peer_index(peer) else {
                return false;
            };
            self.peers[i].priority = priority;
        }
        if self.role != Role::Leader {
            self.reset_election_timer();
        }
        true
    }

    /// Counters of ignored inputs and other events.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// True once the host reported a failed write ([`Node::persist_failed`]): the node
    /// then no longer answers anything that depends on durability. Restart it on a healthy
    /// store.
    pub fn storage_failed(&self) -> bool {
        self.durability.failed
    }
    /// True while the host reports its storage stalled ([`Node::set_storage_stalled`]).
    pub fn storage_stalled(&self) -> bool {
        self.durability.stalled
    }
    /// The log storage.
    pub fn log(&self) -> &S {
        &self.log
    }

    // ----- internals ----------------------------------------------------------------------

    /// The invariants the node relies on between inputs (debug builds only).
    fn debug_check(&self) {
        let last = self.log.last_index();
        debug_assert!(
            !self.durability.stalled || self.role == Role::Follower,
            "a node whose storage stalled neither leads nor campaigns"
        );
        debug_assert!(
            self.applied <= self.commit_index,
            "lastApplied {} beyond commitIndex {}",
            self.applied,
            self.commit_index
        );
        debug_assert!(
            self.commit_index <= last,
            "commitIndex {} beyond the log's last index {last}",
            self.commit_index
        );
        debug_assert!(
            self.durability.durable_index <= last,
            "durable index {} beyond the log's last index {last}",
            self.durability.durable_index
        );
        debug_assert!(
            self.log.term(last).is_none_or(|t| t <= self.current_term),
            "the last entry's term is newer than currentTerm {}",
            self.current_term
        );
        debug_assert!(
            self.membership.index <= last,
            "configuration beyond the log"
        );
        debug_assert_eq!(
            self.role == Role::Leader,
            self.leader == Some(self.cfg.id),
            "a node leads exactly when it knows itself as leader"
        );
        debug_assert!(
            self.peers.iter().all(|p| {
                let r = &p.replication;
                r.state == ProgressState::Snapshot || r.match_index < r.next_index
            }),
            "matchIndex below nextIndex for every peer not sent a snapshot"
        );
        debug_assert!(
            self.peers.iter().all(|p| p.id != self.cfg.id),
            "this node is no peer of its own"
        );
    }

    /// A node outside this node's configuration that sends what only a leader sends is
    /// followed all the same if its term is at least ours (thesis 4.1): this node may
    /// simply not have the entry that added it yet. In an older term it is answered with
    /// ours, as a member would be, so it steps down: otherwise a node whose term went up
    /// while it knew no leader would ignore the leader for good. It is tracked as a peer
    /// that counts in nothing.
    fn admit_unknown_leader(&mut self, from: NodeId, message: &Message<'_>) -> bool {
        let leader_traffic = matches!(
            message,
            Message::AppendEntries(_) | Message::InstallSnapshot(_)
        );
        let stale = message.term() < self.current_term;
        // A leader takes in no stranger: it would replicate to it.
        if from == self.cfg.id || !leader_traffic || (stale && self.role == Role::Leader) {
            return false;
        }
        self.admit_stranger(from).is_some()
    }

    /// Tracks `from`, a node outside the configuration, as a peer that counts in nothing
    /// (so it can be answered), until the next change of role or configuration forgets it.
    /// A candidate is answered this way too (thesis 4.1: "servers process incoming RPC
    /// requests without consulting their current configurations"): a node that missed the
    /// entry adding a voter may be the vote that voter needs, when its log is the only
    /// one up to date enough to lead. `None` if the peer table is full.
    fn admit_stranger(&mut self, from: NodeId) -> Option<usize> {
        let mut peer = Peer::new(from, false);
        peer.learner = false;
        peer.replication = Replication::new(self.log.last_index() + 1, self.timers.now);
        self.peers.push(peer).ok()?;
        Some(self.peers.len() - 1)
    }

    pub(crate) fn peer_index(&self, id: NodeId) -> Option<usize> {
        self.peers.iter().position(|p| p.id == id)
    }

    fn state_change(&self) -> StateChange {
        StateChange {
            role: self.role,
            term: self.current_term,
            leader: self.leader,
        }
    }

    /// Does this node vote, in the configuration or (while joint) the old one?
    pub(crate) fn can_vote(&self) -> bool {
        self.membership.voter || self.membership.voter_outgoing
    }

    /// May this node stand for election? A voter may. So may a node that was a voter until
    /// a configuration entry it does not know to be committed (that entry may never commit),
    /// counting the votes of that configuration's voters: otherwise, when only nodes such
    /// an entry leaves out hold it, they refuse every other candidate (their logs are
    /// longer) and never campaign themselves, and no leader is ever elected. Any winner
    /// still needs a majority of the voters of the configuration it uses, so election
    /// safety holds; once the entry commits, a leader it leaves out steps down (thesis
    /// 4.2.2).
    pub(crate) fn may_campaign(&self) -> bool {
        !self.durability.stalled
            && (self.can_vote()
                || (self.membership.voter_before && self.membership.index > self.commit_index))
    }

    /// Do a majority of the voters agree, `me` saying whether this node does and `peer`
    /// whether a peer does? While joint: a majority of the new voters AND of the old ones.
    pub(crate) fn quorum_agrees(&self, me: bool, peer: impl Fn(&Peer<I>) -> bool) -> bool {
        let majority = |self_in: bool, in_set: fn(&Peer<I>) -> bool| {
            let mut total = self_in as usize;
            let mut yes = (self_in && me) as usize;
            for p in self.peers.iter().filter(|p| in_set(p)) {
                total += 1;
                yes += peer(p) as usize;
            }
            yes * 2 > total
        };
        majority(self.membership.voter, |p| p.voter)
            && (!self.is_joint() || majority(self.membership.voter_outgoing, |p| p.voter_outgoing))
    }

    /// The largest value a quorum of voters has reached, with this node at `own` and each
    /// peer at `value(peer)`: the commit rule's "a majority of matchIndex[i] >= N", and the
    /// newest heartbeat round a quorum answered. While joint, the smaller of the two
    /// configurations' values (thesis 4.3: a majority of each).
    pub(crate) fn quorum_value(&self, own: u64, value: impl Fn(&Peer<I>) -> u64) -> u64 {
        let new = self.majority_value(self.membership.voter, own, |p| p.voter, &value);
        if !self.is_joint() {
            debug_assert_eq!(new, self.quorum_value_by_count(own, &value), "as below");
            return new;
        }
        let old = self.majority_value(
            self.membership.voter_outgoing,
            own,
            |p| p.voter_outgoing,
            &value,
        );
        let value_agreed = new.min(old);
        debug_assert_eq!(
            value_agreed,
            self.quorum_value_by_count(own, &value),
            "the majority's value is the largest one a quorum of each configuration reached"
        );
        value_agreed
    }

    /// [`Node::quorum_value`] by its definition (the largest of the values that a quorum
    /// agrees to have reached), for the debug check of the sorted version.
    fn quorum_value_by_count(&self, own: u64, value: &impl Fn(&Peer<I>) -> u64) -> u64 {
        core::iter::once(own)
            .chain(self.peers.iter().map(value))
            .filter(|&v| self.quorum_agrees(own >= v, |p| value(p) >= v))
            .max()
            .unwrap_or(0)
    }

    /// The largest value a majority of one configuration's voters has reached: the
    /// (⌊n/2⌋+1)-th largest of their values, this node's (`own`) counted if `self_in`; 0
    /// for a configuration without voters (no majority exists).
    fn majority_value(
        &self,
        self_in: bool,
        own: u64,
        in_set: fn(&Peer<I>) -> bool,
        value: &impl Fn(&Peer<I>) -> u64,
    ) -> u64 {
        let mut values: heapless::Vec<u64, N> = heapless::Vec::new();
        for p in self.peers.iter().filter(|p| in_set(p)) {
            // At most one value per peer: the vector holds as many as `peers` does.
            let _ = values.push(value(p));
        }
        let total = values.len() + self_in as usize;
        if total == 0 {
            return 0;
        }
        // Descending, by insertion: a handful of values, and no sort routine in the
        // firmware (`sort_unstable` costs kilobytes of flash).
        for i in 1..values.len() {
            let mut j = i;
            while j > 0 && values[j - 1] < values[j] {
                values.swap(j - 1, j);
                j -= 1;
            }
        }
        // The k-th largest (0-based j) of the peers' values with `own` inserted in order.
        let j = total / 2;
        if !self_in {
            return values[j];
        }
        let above = values.iter().take_while(|&&v| v > own).count();
        match j.cmp(&above) {
            core::cmp::Ordering::Less => values[j],
            core::cmp::Ordering::Equal => own,
            core::cmp::Ordering::Greater => values[j - 1],
        }
    }

    /// Back to the members given at construction.
    pub(crate) fn restore_bootstrap_members(&mut self) {
        self.membership.index = 0;
        self.membership.voter = self.membership.bootstrap_voter;
        self.membership.voter_outgoing = false;
        self.membership.learner = false;
        let next = self.log.last_index() + 1;
        let now = self.timers.now;
        let bootstrap = self.membership.bootstrap.clone();
        self.peers.retain(|p| bootstrap.contains(&p.id));
        for &id in bootstrap.iter() {
            match self.peer_index(id) {
                Some(i) => {
                    let p = &mut self.peers[i];
                    p.voter = true;
                    p.voter_outgoing = false;
                    p.learner = false;
                }
                None => {
                    let mut peer = Peer::new(id, true);
                    peer.replication = Replication::new(next, now);
                    let _ = self.peers.push(peer);
                }
            }
        }
    }

    fn next_deadline(&self) -> u64 {
        let timers = match self.role {
            Role::Leader if self.cfg.check_quorum => self
                .timers
                .heartbeat_deadline
                .min(self.timers.quorum_deadline),
            Role::Leader => self.timers.heartbeat_deadline,
            _ => self.timers.election_deadline,
        };
        let transfer = self.transfer.map_or(u64::MAX, |t| t.deadline);
        timers.min(transfer).min(self.read_deadline())
    }

    fn on_deadline(&mut self) {
        self.expire_forwarded_reads();
        self.abort_transfer_if_due();
        if self.role == Role::Leader {
            if self.timers.now >= self.timers.heartbeat_deadline {
                self.timers.heartbeat_deadline = self.timers.now + self.cfg.heartbeat_ticks as u64;
                self.on_heartbeat_timeout();
            }
            if self.cfg.check_quorum && self.timers.now >= self.timers.quorum_deadline {
                self.timers.quorum_deadline = self.timers.now + self.cfg.election_ticks as u64;
                self.check_quorum();
            }
        } else if self.timers.now >= self.timers.election_deadline {
            self.on_election_timeout();
        }
    }

    /// Persists `currentTerm` and `votedFor` (Figure 2: before answering any RPC).
    pub(crate) fn persist_hard_state(&mut self) {
        self.log.set_hard_state(HardState {
            current_term: self.current_term,
            voted_for: self.voted_for,
        });
        self.durability.note_hard_state();
    }

    pub(crate) fn append_as_leader(
        &mut self,
        kind: EntryKind,
        data: &[u8],
    ) -> Result<Index, StorageError> {
        let index = self.log.last_index() + 1;
        let entry = Entry {
            index,
            term: self.current_term,
            kind,
            data,
        };
        if self.durability.failed {
            return Err(StorageError::Unavailable);
        }
        match self.log.append(&entry) {
            Ok(()) => {
                self.durability.note_append(index);
                Ok(index)
            }
            Err(e) => {
                if e == StorageError::Full {
                    self.counters.log_full += 1;
                    self.snapshots.needed = true;
                }
                Err(e)
            }
        }
    }

    /// Queues an answer to a vote request; it leaves once what it depends on is durable.
    pub(crate) fn answer_vote(&mut self, to: NodeId, message: RequestVoteResponse) {
        let after = self.durability.last_write();
        if let Some(i) = self.peer_index(to) {
            self.peers[i].vote_response = Some(Gated { message, after });
        }
    }

    /// Queues an answer to an AppendEntries, merged with one not yet sent: a success
    /// keeps the higher matched index; a rejection is not hidden by a later success that
    /// says less (a heartbeat's); the newest heartbeat round is echoed either way.
    pub(crate) fn answer_append(&mut self, to: NodeId, message: AppendEntriesResponse) {
        let after = self.durability.last_write();
        let Some(i) = self.peer_index(to) else { return };
        let slot = &mut self.peers[i].append_response;
        let message = match slot {
            Some(old) if old.message.term == message.term => {
                let old = old.message;
                let round = old.round.max(message.round);
                let kept = match (old.success, message.success) {
                    (true, true) if old.index > message.index => old,
                    (false, true) if message.index < old.index => old,
                    _ => message,
                };
                AppendEntriesResponse { round, ..kept }
            }
            _ => message,
        };
        *slot = Some(Gated { message, after });
    }

    /// Queues an answer to an InstallSnapshot chunk.
    pub(crate) fn answer_snapshot(&mut self, to: NodeId, message: InstallSnapshotResponse) {
        let after = self.durability.last_write();
        if let Some(i) = self.peer_index(to) {
            self.peers[i].snapshot_response = Some(Gated { message, after });
        }
    }

    /// Answers a request of an older term with a refusal carrying our term, so its sender
    /// learns that term (Figure 2: "If RPC request or response contains term T >
    /// currentTerm: set currentTerm = T"). Every request kind is answered: a leader whose
    /// InstallSnapshot went unanswered kept sending it to a voter of a higher term forever.
    /// TimeoutNow has no answer of its own; a refused vote carries the term (a node that
    /// reached our term meanwhile takes it for a stale answer and changes nothing, where an
    /// AppendEntries refusal would lower a leader's matchIndex). Answers of an older term
    /// need no answer.
    fn answer_stale(&mut self, peer: NodeId, message: &Message<'_>) {
        let term = self.current_term;
        let refuse_append = |index, round| AppendEntriesResponse {
            term,
            success: false,
            index,
            hint_term: 0,
            hint_index: self.log.last_index(),
            round,
        };
        match message {
            Message::AppendEntries(m) => {
                let a = refuse_append(m.prev_log_index, m.round);
                self.answer_append(peer, a)
            }
            Message::TimeoutNow(_) => self.answer_vote(
                peer,
                RequestVoteResponse {
                    term,
                    vote_granted: false,
                    pre_vote: false,
                },
            ),
            Message::RequestVote(m) => self.answer_vote(
                peer,
                RequestVoteResponse {
                    term,
                    vote_granted: false,
                    pre_vote: m.pre_vote,
                },
            ),
            Message::InstallSnapshot(m) => self.answer_snapshot(
                peer,
                InstallSnapshotResponse {
                    term,
                    last_included_index: m.last_included_index,
                    next_offset: 0,
                    done: false,
                },
            ),
            Message::ReadIndex(m) => self.refuse_read_index(peer, m.id),
            Message::RequestVoteResponse(_)
            | Message::AppendEntriesResponse(_)
            | Message::InstallSnapshotResponse(_)
            | Message::ReadIndexResponse(_) => {}
        }
    }

    /// Picks the next message to send, round-robin over peers.
    fn next_outgoing(&mut self) -> Option<(usize, Outgoing)> {
        let n = self.peers.len();
        // Wrapping by comparison, not `%`: this runs for every output polled, and a
        // division costs more than the rest of an idle peer's checks.
        let mut i = self.outbox.cursor;
        for _ in 0..n {
            if i >= n {
                i = 0;
            }
            if self.outbox.is_idle(i) {
                #[cfg(debug_assertions)]
                assert!(
                    self.outgoing_for(i).is_none(),
                    "a message became ready for an idle peer without an input waking the outbox"
                );
            } else if let Some(out) = self.outgoing_for(i) {
                self.outbox.cursor = if i + 1 == n { 0 } else { i + 1 };
                return Some((i, out));
            } else {
                self.outbox.set_idle(i);
            }
            i += 1;
        }
        None
    }

    fn outgoing_for(&mut self, i: usize) -> Option<Outgoing> {
        let durability = &self.durability;
        let peer = &mut self.peers[i];
        if let Some(g) = peer.vote_response {
            if durability.released(g.after) {
                peer.vote_response = None;
                let m = g.message;
                debug_assert!(
                    !m.vote_granted
                        || m.pre_vote
                        || m.term < self.current_term
                        || self.voted_for == Some(peer.id),
                    "a vote leaves only once recorded (durably: it waited for its batch)"
                );
                return Some(Outgoing::VoteResponse(m));
            }
        }
        if let Some(g) = peer.append_response {
            if durability.released(g.after) {
                peer.append_response = None;
                return Some(Outgoing::AppendResponse(g.message));
            }
        }
        if let Some(g) = peer.snapshot_response {
            if durability.released(g.after) {
                peer.snapshot_response = None;
                return Some(Outgoing::InstallSnapshotResponse(g.message));
            }
        }
        if let Some(out) = self.read_message_for(i) {
            return Some(out);
        }
        match self.role {
            Role::PreCandidate | Role::Candidate => self.vote_request_for(i),
            Role::Leader => {
                let out = self.append_for(i).or_else(|| self.timeout_now_for(i));
                if matches!(out, Some(Outgoing::Append { .. })) {
                    self.reads.round_open = false;
                }
                out
            }
            Role::Follower => None,
        }
    }

    fn build_output(&self, to: NodeId, outgoing: Outgoing) -> Output<'_> {
        let message = match outgoing {
            Outgoing::RequestVote(m) => Message::RequestVote(m),
            Outgoing::VoteResponse(m) => Message::RequestVoteResponse(m),
            Outgoing::AppendResponse(m) => Message::AppendEntriesResponse(m),
            Outgoing::TimeoutNow(m) => Message::TimeoutNow(m),
            Outgoing::ReadIndex(m) => Message::ReadIndex(m),
            Outgoing::ReadIndexResponse(m) => Message::ReadIndexResponse(m),
            Outgoing::InstallSnapshot { offset, max_len } => {
                return Output::SendSnapshot {
                    to,
                    message: self.install_snapshot_header(offset),
                    max_len,
                }
            }
            Outgoing::InstallSnapshotResponse(m) => Message::InstallSnapshotResponse(m),
            Outgoing::Append {
                prev_log_index,
                prev_log_term,
                leader_commit,
                len,
            } => Message::AppendEntries(AppendEntries {
                term: self.current_term,
                prev_log_index,
                prev_log_term,
                leader_commit,
                round: self.reads.round,
                entries: Entries::from_log(&self.log, prev_log_index + 1, len),
            }),
        };
        Output::Send { to, message }
    }

    pub(crate) fn log_state_change(&self) {
        info!(
            "node {} term {} role {} leader {}",
            self.cfg.id,
            self.current_term,
            self.role as u8,
            self.leader.unwrap_or(0)
        );
    }
}

impl<const I: usize> Peer<I> {
    pub(crate) fn new(id: NodeId, voter: bool) -> Self {
        Peer {
            id,
            voter,
            voter_outgoing: false,
            learner: !voter,
            replication: Replication::new(1, 0),
            vote: None,
            send_request_vote: false,
            send_heartbeat: false,
            vote_response: None,
            append_response: None,
            snapshot_response: None,
            acked_round: 0,
            send_timeout_now: false,
            priority: 0,
        }
    }
}
