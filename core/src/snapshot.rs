//! Snapshots and log compaction (§7, thesis chapter 5), one protocol for every host.
//!
//! **Taking one.** The host writes its state machine at an applied index to its own
//! snapshot store, then calls [`Node::snapshot_taken`] (one call): the node builds the
//! metadata (the term there and the configuration in force there), keeps it, asks the host
//! to record it ([`SnapshotWrite::Taken`](crate::SnapshotWrite::Taken)) and compacts its log behind it, keeping
//! `Config::keep_entries_behind_snapshot` entries.
//!
//! **Sending one.** The node never holds snapshot bytes. A leader whose follower needs
//! entries compacted away asks the host to send chunks of the kept snapshot
//! ([`Output::SendSnapshot`](crate::Output::SendSnapshot)): fixed-size chunks of
//! `Config::max_snapshot_chunk_bytes`, up to the in-flight window at once, the host reading
//! each from its store and marking the one that reaches the end as the last. The size need
//! not be known up front. The follower answers each chunk with the offset it expects next,
//! so a lost chunk, a new leader in the same term or a host restart resumes where the
//! follower stopped.
//!
//! **Receiving one.** The follower takes a chunk only at the offset it expects, of the
//! snapshot it is receiving (offset 0 starts a new one), and hands the bytes to the host's
//! store through the memory log ([`SnapshotChunkWrite`](crate::SnapshotChunkWrite)). With
//! the last chunk it installs the snapshot: the log keeps its entries after the snapshot's
//! index if it holds that index with that term, and otherwise restarts after it (§7); the
//! configuration comes from the snapshot's metadata. Once the install is durable the host
//! is asked to restore its state machine from it
//! ([`Output::RestoreSnapshot`](crate::Output::RestoreSnapshot)): a state machine never runs
//! ahead of its durable storage.

use crate::durability::KeptSnapshot;
use crate::membership::records_valid;
use crate::message::{InstallSnapshot, InstallSnapshotResponse};
use crate::node::{Node, Outgoing};
use crate::progress::ProgressState;
use crate::storage::{LogStorage, SnapshotMeta};
use crate::types::{EntryKind, Index, Role};
use core::fmt;

/// Snapshots on their way: the one a leader sends, the one a follower receives, and one
/// the host must restore its state machine from.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SnapshotTransfer {
    /// Leader: the snapshot being sent to followers that need it.
    pub sending: Option<SnapshotMeta>,
    /// Follower: the snapshot being received and the next offset expected.
    pub receiving: Option<(SnapshotMeta, u64)>,
    /// A snapshot the host must restore its state machine from, once the batch with this
    /// sequence number is durable.
    pub restore: Option<(SnapshotMeta, u64)>,
    /// The memory log filled up: ask the host for a snapshot.
    pub needed: bool,
}

/// Why [`Node::snapshot_taken`] refused a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SnapshotError {
    /// The index is beyond what the state machine has applied.
    NotApplied,
    /// The kept snapshot already covers this index.
    Stale,
    /// The log no longer knows the term of this index.
    Compacted,
    /// The configuration in force there has more members than a snapshot can carry.
    TooManyMembers,
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotError::NotApplied => "the index is beyond the applied index",
            SnapshotError::Stale => "the kept snapshot already covers this index",
            SnapshotError::Compacted => "the log no longer knows the term of this index",
            SnapshotError::TooManyMembers => "the configuration is too large for a snapshot",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SnapshotError {}

impl<S: LogStorage, const N: usize, const I: usize, const R: usize> Node<S, N, I, R> {
    /// The host's snapshot store holds its state machine as of applied `index`, durably:
    /// the node keeps it as its snapshot (returning the metadata: the term of `index` and
    /// the configuration in force there), asks the host to record that metadata with it
    /// ([`SnapshotWrite::Taken`](crate::SnapshotWrite::Taken) in the next [`Output::Persist`](crate::Output::Persist)),
    /// sends it to followers that need compacted entries, and compacts its log through
    /// `index` minus `Config::keep_entries_behind_snapshot`.
    pub fn snapshot_taken(&mut self, index: Index) -> Result<SnapshotMeta, SnapshotError> {
        self.outbox.wake();
        if index > self.applied {
            return Err(SnapshotError::NotApplied);
        }
        if self.log.snapshot_meta().is_some_and(|m| m.index >= index) {
            return Err(SnapshotError::Stale);
        }
        let term = self.log.term(index).ok_or(SnapshotError::Compacted)?;
        let mut buf = [0u8; crate::storage::MAX_MEMBERS * 9];
        let config = self.config_bytes_at(index, &mut buf);
        let meta = SnapshotMeta::new(index, term, config).ok_or(SnapshotError::TooManyMembers)?;
        self.log.set_snapshot_meta(meta);
        self.durability.note_snapshot(KeptSnapshot::Taken(meta));
        let through = index.saturating_sub(self.cfg.keep_entries_behind_snapshot);
        if through >= self.log.first_index() {
            self.log.compact(through);
            self.durability.note_compaction(through);
        }
        debug_assert!(self.log.first_index() <= index + 1);
        Ok(meta)
    }

    /// The encoded configuration in force at `index` (the newest membership entry at or
    /// before it, or else the kept snapshot's), copied into `buf`.
    fn config_bytes_at<'b>(&self, index: Index, buf: &'b mut [u8]) -> &'b [u8] {
        let first = self.log.first_index();
        // The configuration in use, if it was in force at `index` (the usual case): no scan.
        let in_use = self.membership.index;
        let mut i = if in_use <= index { in_use } else { index };
        while i >= first && i > 0 {
            if let Some(e) = self.log.entry(i) {
                if e.kind == EntryKind::Membership {
                    return match buf.get_mut(..e.data.len()) {
                        Some(dst) => {
                            dst.copy_from_slice(e.data);
                            dst
                        }
                        None => &[],
                    };
                }
            }
            i -= 1;
        }
        match self.log.snapshot_meta() {
            Some(m) => match buf.get_mut(..m.config().len()) {
                Some(dst) => {
                    dst.copy_from_slice(m.config());
                    dst
                }
                None => &[],
            },
            None => &[],
        }
    }

    /// Leader: peer `i` needs entries compacted away; send the snapshot if there is one.
    pub(crate) fn start_snapshot(&mut self, i: usize) -> bool {
        let Some(meta) = self.log.snapshot_meta() else {
            self.counters.needs_snapshot += 1;
            return false;
        };
        // Transfers of an older snapshot move to this one too (not only peer `i`'s).
        self.refresh_snapshot_out();
        let r = &mut self.peers[i].replication;
        r.become_snapshot(meta.index, self.timers.now);
        true
    }

    /// Leader: the host kept a new snapshot since transfers began: every transfer restarts
    /// with the snapshot kept now, so chunks never mix two snapshots.
    fn refresh_snapshot_out(&mut self) {
        let current = self.log.snapshot_meta();
        if current == self.snapshots.sending {
            return;
        }
        self.snapshots.sending = current;
        let now = self.timers.now;
        for p in self.peers.iter_mut() {
            let r = &mut p.replication;
            if r.state != ProgressState::Snapshot {
                continue;
            }
            match current {
                Some(meta) => r.become_snapshot(meta.index, now),
                None => r.become_probe(r.match_index + 1),
            }
        }
    }

    /// Leader: the next chunk for peer `i`, if the window has room.
    pub(crate) fn snapshot_chunk_for(&mut self, i: usize) -> Option<Outgoing> {
        self.refresh_snapshot_out();
        let meta = self.snapshots.sending?;
        let chunk = self.cfg.max_snapshot_chunk_bytes as u64;
        let r = &mut self.peers[i].replication;
        // One chunk until the first answer (a small snapshot ends there), then one more per
        // chunk answered, up to the window: the host reads few chunks past the end.
        let window = (1 + r.snapshot_acked / chunk).min(self.cfg.max_inflight.min(I) as u64);
        if r.snapshot_index != meta.index || r.snapshot_sent >= r.snapshot_acked + window * chunk {
            return None;
        }
        let offset = r.snapshot_sent;
        r.snapshot_sent = offset + chunk;
        self.peers[i].send_heartbeat = false;
        Some(Outgoing::InstallSnapshot {
            offset,
            max_len: self.cfg.max_snapshot_chunk_bytes,
        })
    }

    /// The InstallSnapshot of a chunk at `offset` of the snapshot being sent, but for its
    /// bytes (the host reads them).
    pub(crate) fn install_snapshot_header(&self, offset: u64) -> InstallSnapshot<'_> {
        let meta = self.snapshots.sending.as_ref();
        InstallSnapshot {
            term: self.current_term,
            last_included_index: meta.map_or(0, |m| m.index),
            last_included_term: meta.map_or(0, |m| m.term),
            offset,
            done: false,
            config: meta.map_or(&[][..], |m| m.config()),
            data: &[],
        }
    }

    /// InstallSnapshot RPC, receiver implementation (Figure 13, in chunks).
    pub(crate) fn on_install_snapshot(&mut self, peer: usize, m: &InstallSnapshot<'_>) {
        let Some(from) = self.accept_leader(peer) else {
            return;
        };
        let consistent = m.last_included_term <= m.term
            && m.last_included_index > 0
            && m.offset.checked_add(m.data.len() as u64).is_some()
            && (m.config.is_empty() || records_valid(m.config));
        let meta = SnapshotMeta::new(m.last_included_index, m.last_included_term, m.config);
        let (true, Some(meta)) = (consistent, meta) else {
            self.counters.invalid += 1;
            return;
        };
        let term = self.current_term;
        let answer = move |next_offset, done| InstallSnapshotResponse {
            term,
            last_included_index: meta.index,
            next_offset,
            done,
        };
        if meta.index <= self.commit_index {
            // Everything it covers is committed here already.
            let a = answer(m.offset + m.data.len() as u64, true);
            self.answer_snapshot(from, a);
            return;
        }
        // A new snapshot starts at offset 0; the same snapshot from a new leader resumes.
        let same = self.snapshots.receiving.is_some_and(|(im, _)| im == meta);
        if m.offset == 0 && !same {
            self.snapshots.receiving = Some((meta, 0));
        }
        let expected = match self.snapshots.receiving {
            Some((im, next)) if im == meta => next,
            _ => 0,
        };
        // One chunk waits in the memory log until the host takes it; a second one, or one
        // that does not fit, is asked for again.
        if m.offset != expected
            || self.durability.failed
            || self.durability.holds_chunk()
            || self.log.stage_snapshot_chunk(m.data).is_err()
        {
            let a = answer(expected, false);
            self.answer_snapshot(from, a);
            return;
        }
        self.durability.note_snapshot_chunk(meta, m.offset);
        let next = m.offset + m.data.len() as u64;
        self.snapshots.receiving = Some((meta, next));
        if !m.done {
            let a = answer(next, false);
            self.answer_snapshot(from, a);
            return;
        }
        self.install(meta);
        let a = answer(next, true);
        self.answer_snapshot(from, a);
    }

    /// The snapshot received is complete: it becomes the kept one, and the log keeps what
    /// follows it if it holds its last entry, or restarts after it (§7).
    fn install(&mut self, meta: SnapshotMeta) {
        self.snapshots.receiving = None;
        if self.log.term(meta.index) == Some(meta.term) {
            self.log.compact(meta.index);
            self.durability.note_compaction(meta.index);
        } else {
            self.log.reset(meta.index, meta.term);
            self.durability.note_reset(meta.index, meta.term);
        }
        self.log.set_snapshot_meta(meta);
        self.durability.note_snapshot(KeptSnapshot::Installed(meta));
        debug_assert_eq!(self.log.term(meta.index), Some(meta.term));
        self.commit_index = self.commit_index.max(meta.index);
        if self.applied < meta.index {
            // Restored once the install is durable, as entries are applied only once
            // durable: a host's state machine never runs ahead of its storage.
            self.snapshots.restore = Some((meta, self.durability.last_write()));
        }
        self.load_config_from_log();
    }

    /// Leader: a follower answered a chunk.
    pub(crate) fn on_install_snapshot_response(&mut self, peer: usize, m: InstallSnapshotResponse) {
        if self.role != Role::Leader {
            self.counters.stale += 1;
            return;
        }
        if m.last_included_index > self.log.last_index() {
            self.counters.invalid += 1;
            return;
        }
        let now = self.timers.now;
        let r = &mut self.peers[peer].replication;
        r.recent_active = true;
        if m.done {
            if m.last_included_index > r.match_index {
                r.match_index = m.last_included_index;
                r.last_progress = now;
            }
            if r.state == ProgressState::Snapshot {
                r.become_probe(r.match_index + 1);
            }
            self.advance_commit_index();
            return;
        }
        if r.state != ProgressState::Snapshot || m.last_included_index != r.snapshot_index {
            self.counters.stale += 1;
            return;
        }
        // The follower's offset grows; a lost chunk is sent again when the window stalls
        // for the retransmission timeout (`on_heartbeat_timeout`). Back at 0, it lost the
        // chunks it had (a restart forgets the snapshot being received): start over. Back
        // anywhere else (after a restart, a late copy of the first chunk), the timeout
        // resumes from its latest answer: a reordered answer looks the same.
        r.snapshot_heard = m.next_offset;
        if m.next_offset > r.snapshot_acked {
            r.snapshot_acked = m.next_offset;
            r.snapshot_sent = r.snapshot_sent.max(m.next_offset);
            r.last_progress = now;
        } else if m.next_offset == 0 && r.snapshot_acked > 0 {
            r.snapshot_acked = 0;
            r.snapshot_sent = 0;
        }
    }

    /// The snapshot for the host to restore, before any entry after it is applied.
    pub(crate) fn take_restore(&mut self) -> Option<SnapshotMeta> {
        let (meta, after) = self.snapshots.restore?;
        if !self.durability.released(after) {
            return None;
        }
        self.snapshots.restore = None;
        self.applied = self.applied.max(meta.index);
        Some(meta)
    }
}
