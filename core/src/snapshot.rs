//! Snapshots and log compaction (§7, thesis chapter 5).
//!
//! The host snapshots its state machine at an applied index: it builds the metadata with
//! [`Node::snapshot_meta_at`], keeps the bytes in its storage (e.g.
//! [`VecLog::save_snapshot`](crate::VecLog::save_snapshot)), and compacts the log with
//! [`Node::compact`]. A leader whose follower needs compacted entries sends the snapshot in
//! chunks of at most `Config::max_snapshot_chunk_bytes` (InstallSnapshot), one at a time;
//! the follower answers with the offset it expects next, so a lost chunk or a new leader in
//! the same term resumes where it stopped. The follower stores the chunks through its
//! storage, installs the snapshot when complete, and asks its host to restore its state
//! machine from it with [`Output::RestoreSnapshot`](crate::Output::RestoreSnapshot).

use crate::membership::records_valid;
use crate::message::{InstallSnapshot, InstallSnapshotResponse};
use crate::node::{Node, Outgoing};
use crate::progress::ProgressState;
use crate::storage::{LogStorage, SnapshotMeta};
use crate::types::{EntryKind, Index, Role};

impl<S: LogStorage, const N: usize, const I: usize, const R: usize> Node<S, N, I, R> {
    /// The metadata of a snapshot of the state machine at `index` (at most the applied
    /// index) that is `size` bytes long: its term and the configuration in force there.
    /// `None` if `index` is not applied or its term is no longer known.
    pub fn snapshot_meta_at(&self, index: Index, size: u64) -> Option<SnapshotMeta> {
        if index > self.applied {
            return None;
        }
        let term = self.log.term(index)?;
        let first = self.log.first_index();
        let mut i = index;
        while i >= first && i > 0 {
            if let Some(e) = self.log.entry(i) {
                if e.kind == EntryKind::Membership {
                    return SnapshotMeta::new(index, term, size, e.data);
                }
            }
            i -= 1;
        }
        let config = self
            .log
            .snapshot_meta()
            .map(|m| m.config().len())
            .unwrap_or(0);
        match self.log.snapshot_meta() {
            Some(m) if config > 0 => SnapshotMeta::new(index, term, size, m.config()),
            _ => SnapshotMeta::new(index, term, size, &[]),
        }
    }

    /// Leader: peer `i` needs entries compacted away; send the snapshot if there is one.
    pub(crate) fn start_snapshot(&mut self, i: usize) -> bool {
        let Some(meta) = self.log.snapshot_meta() else {
            self.counters.needs_snapshot += 1;
            return false;
        };
        self.snapshot_out = Some(meta);
        let r = &mut self.peers[i].replication;
        r.state = ProgressState::Snapshot;
        r.snapshot_index = meta.index;
        r.snapshot_offset = 0;
        r.probe_sent = false;
        r.inflight.clear();
        r.last_progress = self.now;
        true
    }

    /// Leader: the host kept a new snapshot (or dropped it) since transfers began: every
    /// transfer restarts with the snapshot kept now, so chunks never mix two snapshots.
    fn refresh_snapshot_out(&mut self) {
        let current = self.log.snapshot_meta();
        if current == self.snapshot_out {
            return;
        }
        self.snapshot_out = current;
        for p in self.peers.iter_mut() {
            let r = &mut p.replication;
            if r.state != ProgressState::Snapshot {
                continue;
            }
            match current {
                Some(meta) => {
                    r.snapshot_index = meta.index;
                    r.snapshot_offset = 0;
                    r.probe_sent = false;
                }
                None => r.become_probe(r.match_index + 1),
            }
        }
    }

    /// Leader: the next chunk for peer `i`, if none is in flight.
    pub(crate) fn snapshot_chunk_for(&mut self, i: usize) -> Option<Outgoing> {
        self.refresh_snapshot_out();
        let meta = self.snapshot_out?;
        let r = &self.peers[i].replication;
        if r.probe_sent || r.snapshot_index != meta.index {
            return None;
        }
        let offset = r.snapshot_offset;
        let len = self
            .log
            .snapshot_chunk(offset, self.cfg.max_snapshot_chunk_bytes)
            .map(|c| c.len())
            .ok()?;
        self.peers[i].replication.probe_sent = true;
        self.peers[i].send_heartbeat = false;
        Some(Outgoing::InstallSnapshot { offset, len })
    }

    /// Builds the InstallSnapshot of a chunk decided by `snapshot_chunk_for`.
    pub(crate) fn install_snapshot_message(&self, offset: u64, len: usize) -> InstallSnapshot<'_> {
        let meta = self.snapshot_out.as_ref();
        InstallSnapshot {
            term: self.current_term,
            last_included_index: meta.map_or(0, |m| m.index),
            last_included_term: meta.map_or(0, |m| m.term),
            size: meta.map_or(0, |m| m.size),
            offset,
            config: meta.map_or(&[][..], |m| m.config()),
            data: self.log.snapshot_chunk(offset, len).unwrap_or(&[]),
        }
    }

    /// InstallSnapshot RPC, receiver implementation (Figure 13, in chunks).
    pub(crate) fn on_install_snapshot(&mut self, peer: usize, m: &InstallSnapshot<'_>) {
        let Some(from) = self.accept_leader(peer) else {
            return;
        };
        let consistent = m.offset <= m.size
            && (m.data.len() as u64) <= m.size - m.offset
            && m.last_included_term <= m.term
            && m.last_included_index > 0
            && (m.config.is_empty() || records_valid(m.config));
        let meta = SnapshotMeta::new(
            m.last_included_index,
            m.last_included_term,
            m.size,
            m.config,
        );
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
            let a = answer(meta.size, true);
            self.answer_snapshot(from, a);
            return;
        }
        // A new snapshot starts at offset 0; the same snapshot from a new leader resumes.
        let same = self.incoming_snapshot.is_some_and(|(im, _)| im == meta);
        if m.offset == 0 && !same {
            self.incoming_snapshot = Some((meta, 0));
        }
        let expected = match self.incoming_snapshot {
            Some((im, next)) if im == meta => next,
            _ => 0,
        };
        if m.offset != expected {
            let a = answer(expected, false);
            self.answer_snapshot(from, a);
            return;
        }
        if self
            .log
            .receive_snapshot_chunk(&meta, m.offset, m.data)
            .is_err()
        {
            self.storage_failed_now();
            return;
        }
        let next = m.offset + m.data.len() as u64;
        self.incoming_snapshot = Some((meta, next));
        if next < meta.size {
            let a = answer(next, false);
            self.answer_snapshot(from, a);
            return;
        }
        // Complete: the log restarts after the snapshot.
        if self.log.install_snapshot(&meta).is_err() {
            self.storage_failed_now();
            return;
        }
        self.incoming_snapshot = None;
        self.durability.record_truncation(self.log.last_index() + 1);
        self.durability.record_write(self.log.last_index());
        self.commit_index = self.commit_index.max(meta.index);
        if self.applied < meta.index {
            // Restored once the installed snapshot is durable, as entries are applied only
            // once durable: a host's state machine never runs ahead of its storage.
            self.restore_pending = Some((meta, self.durability.last_write));
        }
        self.load_config_from_log();
        let a = answer(meta.size, true);
        self.answer_snapshot(from, a);
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
        let now = self.now;
        let size = self.snapshot_out.map_or(0, |s| s.size);
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
        r.snapshot_offset = m.next_offset.min(size);
        r.probe_sent = false;
        r.last_progress = now;
    }

    /// The snapshot for the host to restore, before any entry after it is applied.
    pub(crate) fn take_restore(&mut self) -> Option<SnapshotMeta> {
        let (meta, after) = self.restore_pending?;
        if !self.durability.released(after) {
            return None;
        }
        self.restore_pending = None;
        self.applied = self.applied.max(meta.index);
        Some(meta)
    }
}
