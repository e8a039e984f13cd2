//! The reference state machine: a key-value store with exactly-once writes.
//!
//! Every write carries a client session id and a sequence number. The store remembers the
//! outcome of each write of a session until the client acknowledges it (`ack_below`), so a
//! retried write (after a timeout, a lost answer or a new leader) returns the first
//! outcome instead of being applied again (thesis 6.3). Sessions are bounded: past
//! [`MAX_SESSIONS`] the least recently used one is forgotten, deterministically (by log
//! index), so every replica forgets the same one.
//!
//! The pairs are in a hash index for point reads and writes (an overwrite of an existing
//! key is one hash probe, no walk down a tree of heap-allocated keys), with the keys also
//! in an ordered set for listings and snapshots (in key order). Keys of up to 22 bytes are
//! held in place, longer ones in one allocation both share. Commands are decoded borrowing
//! from the entry, so an overwrite that does not ask for the previous value copies the new
//! one into the old one's buffer and allocates nothing. A put or delete returns the
//! previous value only when it asks for it (`return_previous`); otherwise that value is
//! neither copied into the session's outcome table nor sent back.
//!
//! ```
//! use coracle_quic::kv::{Applied, Kv};
//! use coracle_quic::protocol::{Command, WriteOp, WriteOutcome};
//! let mut kv = Kv::new();
//! let op = WriteOp::Put { key: b"k".to_vec(), value: b"v".to_vec(), return_previous: false };
//! let put = Command::Write { client: 7, seq: 1, ack_below: 1, op };
//! let bytes = postcard::to_allocvec(&put).unwrap();
//! assert_eq!(kv.apply(1, &bytes), Applied::Write(WriteOutcome::Done { previous: None }));
//! // The same request again (a retry): the first outcome, not applied twice.
//! assert_eq!(kv.apply(2, &bytes), Applied::Write(WriteOutcome::Done { previous: None }));
//! assert_eq!(kv.get(b"k"), Some(&b"v"[..]));
//! ```

use crate::host::{
    ApplyError, ResponseCodec, RestoreError, SnapshotError, SnapshotSource, StateMachine,
};
use crate::protocol::WriteOutcome;
#[cfg(doc)]
use crate::protocol::{Command, WriteOp};
use coracle::Index;
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

/// Sessions remembered at most.
pub const MAX_SESSIONS: usize = 65_536;
/// Unacknowledged outcomes remembered per session at most.
pub const MAX_OUTCOMES_PER_SESSION: usize = 4096;

#[derive(Debug, Default, Clone)]
struct Session {
    ack_below: u64,
    outcomes: Outcomes,
    last_index: Index,
}

/// A session's unacknowledged outcomes, by sequence number (ascending, each once). A
/// client's writes mostly arrive in order and are acknowledged in order, so an insertion
/// is mostly a push at the back and forgetting is a pop at the front; the few outcomes
/// kept (one per write in flight) make a binary search cheaper than a tree.
#[derive(Debug, Default, Clone)]
struct Outcomes(VecDeque<(u64, WriteOutcome)>);

impl Outcomes {
    fn get(&self, seq: u64) -> Option<&WriteOutcome> {
        let i = self.0.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        self.0.get(i).map(|(_, o)| o)
    }

    /// Records the outcome of `seq` (not recorded yet).
    fn insert(&mut self, seq: u64, outcome: WriteOutcome) {
        match self.0.back() {
            Some(&(last, _)) if last >= seq => {
                let i = self.0.partition_point(|(s, _)| *s < seq);
                if self.0.get(i).is_some_and(|(s, _)| *s == seq) {
                    self.0[i].1 = outcome;
                } else {
                    self.0.insert(i, (seq, outcome));
                }
            }
            _ => self.0.push_back((seq, outcome)),
        }
    }

    /// Forgets the outcomes below `ack`.
    fn forget_below(&mut self, ack: u64) {
        while self.0.front().is_some_and(|(s, _)| *s < ack) {
            self.0.pop_front();
        }
    }

    /// Forgets the lowest outcomes until at most `max` are left.
    fn truncate_front(&mut self, max: usize) {
        while self.0.len() > max {
            self.0.pop_front();
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(u64, WriteOutcome)> {
        self.0.iter()
    }

    fn from_unordered(mut outcomes: Vec<(u64, WriteOutcome)>) -> Self {
        // A snapshot writes them in order; a stable sort and keeping the last of equal
        // sequence numbers is what collecting into a map did.
        outcomes.sort_by_key(|(s, _)| *s);
        let mut kept: VecDeque<(u64, WriteOutcome)> = VecDeque::with_capacity(outcomes.len());
        for (s, o) in outcomes {
            match kept.back_mut() {
                Some(last) if last.0 == s => last.1 = o,
                _ => kept.push_back((s, o)),
            }
        }
        Outcomes(kept)
    }
}

/// A key of the store: up to [`Key::INLINE`] bytes held in place (no allocation, and a hash
/// probe or tree walk compares it without following a pointer to a cold cache line),
/// longer ones on the heap, shared by the clones (the hash index and the ordered map
/// hold the same allocation). Hashed, compared and ordered as the byte string it holds
/// (so it can be looked up by `&[u8]`).
#[derive(Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; Key::INLINE] },
    Shared(Arc<[u8]>),
}

impl Key {
    /// Longest key held in place (the enum is then as large as a fat pointer and a word).
    const INLINE: usize = 22;

    fn new(key: &[u8]) -> Key {
        if key.len() <= Key::INLINE {
            let mut bytes = [0; Key::INLINE];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Shared(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Shared(k) => k,
        }
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, so a lookup by `&[u8]` finds it.
        self.as_slice().hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_slice())
    }
}

/// The key-value pairs: a hash index from key to value for point reads and writes (an
/// overwrite of an existing key is one hash probe, comparing a key held in place, not a
/// walk down a tree of heap-allocated keys), and the same keys in order (a long key's
/// allocation is shared by both) for listings and snapshots, which look each value up in
/// the index. Both hold the same keys.
#[derive(Debug, Default, Clone)]
struct Store {
    index: HashMap<Key, Vec<u8>>,
    order: BTreeSet<Key>,
    /// Bytes of all keys and values (to size a snapshot's buffer).
    bytes: usize,
    /// The pairs as they were when a snapshot began, while it is written out.
    frozen: Option<Frozen>,
}

/// The pairs of a snapshot being written out a few at a time while writes go on (see
/// [`Kv::begin_snapshot`]): keys up to `written` are written already; a key after it is
/// written with its value from `before` if it changed since the snapshot began (`None`:
/// it had no value then), with its current value otherwise.
#[derive(Debug, Default, Clone)]
struct Frozen {
    written: Option<Key>,
    before: BTreeMap<Key, Option<Vec<u8>>>,
}

impl Store {
    /// Before `key` changes: keeps its value for the snapshot being written, if that has
    /// not passed it yet and it did not change before.
    fn keep_for_snapshot(&mut self, key: &[u8]) {
        let Some(frozen) = &mut self.frozen else {
            return;
        };
        if frozen.written.as_deref().is_some_and(|w| key <= w) || frozen.before.contains_key(key) {
            return;
        }
        let value = self.index.get(key).cloned();
        frozen.before.insert(Key::new(key), value);
    }

    /// Appends up to `max` more pairs of the snapshot being written to `out` (as postcard
    /// writes them: each key and value a byte string), stopping once `out` holds
    /// `max_bytes`; the pairs appended, and whether that was all.
    fn write_frozen(&mut self, out: &mut Vec<u8>, max: usize, max_bytes: usize) -> (usize, bool) {
        let Some(frozen) = &self.frozen else {
            return (0, true);
        };
        let after = match &frozen.written {
            Some(w) => Bound::Excluded(&w[..]),
            None => Bound::Unbounded,
        };
        let mut now = self
            .order
            .range::<[u8], _>((after, Bound::Unbounded))
            .peekable();
        let mut then = frozen
            .before
            .range::<[u8], _>((after, Bound::Unbounded))
            .peekable();
        let (mut n, mut last) = (0, None);
        while n < max && out.len() < max_bytes {
            // The next key of either; a key in both takes its value from `before`.
            let next_now = now.peek().copied();
            let next_then = then.peek().map(|(k, _)| *k);
            let from_then = match (next_now, next_then) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(a), Some(b)) => b <= a,
            };
            let (key, value) = if from_then {
                let Some((b, v)) = then.next() else { break };
                if next_now == Some(b) {
                    now.next();
                }
                (b, v.as_deref())
            } else {
                let Some(k) = now.next() else { break };
                (k, Some(self.value_of(k)))
            };
            last = Some(key.clone());
            if let Some(v) = value {
                push_byte_string(out, key);
                push_byte_string(out, v);
                n += 1;
            }
        }
        let done = now.peek().is_none() && then.peek().is_none();
        let Some(frozen) = &mut self.frozen else {
            return (n, done);
        };
        if let Some(last) = last {
            // What `before` held up to `last` is written: dropped.
            frozen.before = frozen.before.split_off(&last);
            frozen.before.remove(&last);
            frozen.written = Some(last);
        }
        (n, done)
    }

    fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.index.get(key)
    }

    /// Sets `key` to `value`; the value it had if `previous` is asked for. Without it, an
    /// existing value's buffer is reused when the new value fits it well (no allocation,
    /// and no free of a buffer gone cold).
    fn put(&mut self, key: &[u8], value: &[u8], previous: bool) -> Option<Vec<u8>> {
        self.keep_for_snapshot(key);
        let Some(v) = self.index.get_mut(key) else {
            self.insert_new(key, value.to_vec());
            return None;
        };
        self.bytes = self.bytes + value.len() - v.len();
        if previous {
            Some(std::mem::replace(v, value.to_vec()))
        } else {
            if v.capacity() >= value.len() && v.capacity() / 2 <= value.len() {
                v.clear();
                v.extend_from_slice(value);
            } else {
                *v = value.to_vec();
            }
            None
        }
    }

    /// Sets `key` to `value`; the value it had.
    fn insert(&mut self, key: &[u8], value: Vec<u8>) -> Option<Vec<u8>> {
        self.keep_for_snapshot(key);
        if let Some(v) = self.index.get_mut(key) {
            self.bytes = self.bytes + value.len() - v.len();
            return Some(std::mem::replace(v, value));
        }
        self.insert_new(key, value);
        None
    }

    /// Adds `key` (not in the store) with `value`.
    fn insert_new(&mut self, key: &[u8], value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        let key = Key::new(key);
        self.order.insert(key.clone());
        self.index.insert(key, value);
    }

    /// Removes `key`; the value it had.
    fn remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.keep_for_snapshot(key);
        let (key, value) = self.index.remove_entry(key)?;
        self.order.remove(&key);
        self.bytes -= key.len() + value.len();
        Some(value)
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// The value of `key`, a key of `order` (so of `index` too).
    fn value_of(&self, key: &[u8]) -> &[u8] {
        self.index.get(key).map_or(&[][..], Vec::as_slice)
    }

    /// The pairs from `from` on, in key order.
    fn range_from<'a>(&'a self, from: &[u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.order
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .map(|k| (&k[..], self.value_of(k)))
    }

    /// Every pair, in key order (of known length: a snapshot writes it first).
    fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        self.order.iter().map(|k| (&k[..], self.value_of(k)))
    }

    fn from_pairs(pairs: Vec<(ByteBuf, ByteBuf)>) -> Self {
        let mut store = Store {
            index: HashMap::with_capacity(pairs.len()),
            ..Store::default()
        };
        let mut keys = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let v = v.into_vec();
            if let Some(old) = store.index.get_mut(&k[..]) {
                // A key twice (no snapshot of ours has that): the last value, as a map.
                store.bytes = store.bytes + v.len() - old.len();
                *old = v;
                continue;
            }
            store.bytes += k.len() + v.len();
            let k = Key::new(&k);
            keys.push(k.clone());
            store.index.insert(k, v);
        }
        // In key order already (a snapshot writes them so): a bulk build.
        store.order = keys.into_iter().collect();
        store
    }
}

/// What applying a command did (postcard-encoded when a follower forwards a write:
/// variants are only ever appended).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A client's write, with its outcome.
    Write(WriteOutcome),
    /// Bytes that are no command.
    Ignored,
}

/// The replicated key-value store.
#[derive(Debug, Default, Clone)]
pub struct Kv {
    data: Store,
    sessions: HashMap<u64, Session>,
    /// `(last_index, client)` of the sessions as they were when an eviction last needed
    /// them, most recently used first (so the least recently used is popped from the end).
    /// Built only when a session must be forgotten, not maintained per write: an entry is
    /// still valid while its session's `last_index` is the same; a session written since
    /// (or created since) is more recent than every entry, because log indices only grow.
    by_age: Vec<(Index, u64)>,
    applied: Index,
    malformed: u64,
    /// The snapshot being written out a few pairs at a time.
    snapshot: Option<SnapshotJob>,
    /// Where the steps of the snapshot a node asked for go ([`StateMachine::snapshot`]).
    pipe: Option<Pipe>,
}

/// Key-value pairs of a snapshot written out per turn of a node's event loop (about 60 µs
/// of CPU at 256-byte values; at 64 clients, p99.9 15-17 ms against 17-21 ms with 2 048).
pub const SNAPSHOT_PAIRS_PER_STEP: usize = 256;

/// Bytes of a snapshot written out per turn at most (large values: fewer pairs a step), and
/// the size of each piece handed to the thread that writes the file.
pub const SNAPSHOT_BYTES_PER_STEP: usize = 1 << 20;

/// Pieces of a snapshot queued for its writing thread at most: what a snapshot holds in
/// memory beyond the state machine is about this many steps.
const SNAPSHOT_PIECES_QUEUED: usize = 4;

/// What the thread that writes a snapshot's file is given.
#[derive(Debug, Clone)]
enum Piece {
    Bytes(Vec<u8>),
    /// All is written.
    End,
    /// The store could not write it out.
    Failed(String),
}

/// The store's end of a snapshot being written by a node's thread.
#[derive(Debug, Clone)]
struct Pipe {
    pieces: std::sync::mpsc::SyncSender<Piece>,
    /// Bytes written out and not yet queued (the thread is behind).
    step: Vec<u8>,
    /// All is written out (the end not yet queued).
    ended: bool,
}

/// The view of a [`Kv`] a node's snapshot thread writes: the pieces the store writes out
/// [`SNAPSHOT_PAIRS_PER_STEP`] pairs per turn of the node's loop (copy-on-write:
/// [`Kv::begin_snapshot`]), so the loop never pauses for long however large the state.
#[derive(Debug)]
pub struct KvSnapshot {
    pieces: std::sync::mpsc::Receiver<Piece>,
}

impl SnapshotSource for KvSnapshot {
    fn write_to(&mut self, sink: &mut dyn std::io::Write) -> std::io::Result<()> {
        loop {
            match self.pieces.recv() {
                Ok(Piece::Bytes(b)) => sink.write_all(&b)?,
                Ok(Piece::End) => return Ok(()),
                Ok(Piece::Failed(e)) => return Err(std::io::Error::other(e)),
                Err(_) => {
                    return Err(std::io::Error::other(
                        "the store was replaced (or failed) before its snapshot was written out",
                    ))
                }
            }
        }
    }
}

impl StateMachine for Kv {
    /// The entry's index, and what the command did.
    type Response = (Index, Applied);
    type Snapshot = KvSnapshot;

    fn apply(&mut self, index: Index, command: &[u8]) -> Result<(Index, Applied), ApplyError> {
        Ok((index, Kv::apply(self, index, command)))
    }

    /// Postcard, as the client protocol: a follower forwards writes to the leader.
    fn response_codec() -> Option<ResponseCodec<(Index, Applied)>> {
        Some(ResponseCodec::postcard())
    }

    fn snapshot(&mut self, applied: Index) -> Result<KvSnapshot, SnapshotError> {
        // Entries after the last command (no-ops, configurations) are applied too.
        self.applied = self.applied.max(applied);
        self.begin_snapshot()
            .map_err(|e| SnapshotError::Failed(e.to_string()))?;
        let (pieces, rx) = std::sync::mpsc::sync_channel(SNAPSHOT_PIECES_QUEUED);
        self.pipe = Some(Pipe {
            pieces,
            step: Vec::new(),
            ended: false,
        });
        Ok(KvSnapshot { pieces: rx })
    }

    /// Writes out the next pairs of the snapshot and hands them to the node's thread
    /// (waiting for a later turn if the thread is behind).
    fn snapshot_step(&mut self) -> bool {
        let Some(pipe) = self.pipe.as_mut() else {
            return false;
        };
        if pipe.step.is_empty() && !pipe.ended {
            let mut step = std::mem::take(&mut pipe.step);
            let result = if self.snapshot.is_none() {
                // Given up (the store was replaced): the view fails.
                Some(Err(KvSnapshotError("given up".into())))
            } else {
                self.continue_snapshot(SNAPSHOT_PAIRS_PER_STEP, SNAPSHOT_BYTES_PER_STEP, &mut step)
            };
            let Some(pipe) = self.pipe.as_mut() else {
                return false;
            };
            pipe.step = step;
            match result {
                None => {}
                Some(Ok(())) => pipe.ended = true,
                Some(Err(e)) => {
                    let _ = pipe.pieces.try_send(Piece::Failed(e.to_string()));
                    self.pipe = None;
                    return false;
                }
            }
        }
        let Some(pipe) = self.pipe.as_mut() else {
            return false;
        };
        let piece = if !pipe.step.is_empty() {
            Piece::Bytes(std::mem::take(&mut pipe.step))
        } else if pipe.ended {
            Piece::End
        } else {
            return true;
        };
        let end = matches!(piece, Piece::End);
        match pipe.pieces.try_send(piece) {
            Ok(()) if end => {
                self.pipe = None;
                false
            }
            Ok(()) => true,
            Err(std::sync::mpsc::TrySendError::Full(Piece::Bytes(bytes))) => {
                pipe.step = bytes;
                true
            }
            Err(std::sync::mpsc::TrySendError::Full(_)) => true,
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                // The thread stopped on an error, which it reports.
                self.pipe = None;
                self.snapshot = None;
                self.data.frozen = None;
                false
            }
        }
    }

    fn restore(
        &mut self,
        index: Index,
        source: &mut dyn std::io::Read,
    ) -> Result<(), RestoreError> {
        let mut source = source;
        let kv = Kv::restore_from(&mut source).map_err(|e| RestoreError::Invalid(e.to_string()))?;
        if kv.applied() != index {
            return Err(RestoreError::Invalid(format!(
                "the snapshot at index {index} holds a KV store at index {}",
                kv.applied()
            )));
        }
        *self = kv;
        Ok(())
    }
}

/// A snapshot begun by [`Kv::begin_snapshot`].
#[derive(Debug, Default, Clone)]
struct SnapshotJob {
    /// The applied index it is of.
    index: Index,
    /// What is written so far: the header, then the pairs.
    out: Vec<u8>,
    /// The pairs still to write.
    pairs_left: usize,
    /// The rest, as it was when the snapshot began: the sessions.
    tail: Vec<u8>,
}

impl Kv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the command in entry `index`. Bytes that are no command are counted in
    /// [`Kv::malformed`] and applied as nothing, by every replica alike.
    pub fn apply(&mut self, index: Index, data: &[u8]) -> Applied {
        self.applied = index;
        // Decoded in place: keys and values are copied only where they are kept.
        let command: CommandRef<'_> = match postcard::from_bytes(data) {
            Ok(c) => c,
            Err(_) => {
                self.malformed += 1;
                return Applied::Ignored;
            }
        };
        match command {
            CommandRef::Write {
                client,
                seq,
                ack_below,
                op,
            } => Applied::Write(self.write(index, client, seq, ack_below, op)),
        }
    }

    /// Records that entry `index` (a no-op or a configuration) was applied.
    pub fn skip(&mut self, index: Index) {
        self.applied = index;
    }

    fn write(
        &mut self,
        index: Index,
        client: u64,
        seq: u64,
        ack_below: u64,
        op: WriteOpRef<'_>,
    ) -> WriteOutcome {
        let session = self.sessions.entry(client).or_default();
        session.last_index = index;
        session.ack_below = session.ack_below.max(ack_below);
        session.outcomes.forget_below(session.ack_below);
        let outcome = if seq < session.ack_below {
            WriteOutcome::Stale
        } else if let Some(done) = session.outcomes.get(seq) {
            done.clone()
        } else {
            let outcome = apply_op(&mut self.data, op);
            session.outcomes.insert(seq, outcome.clone());
            session.outcomes.truncate_front(MAX_OUTCOMES_PER_SESSION);
            outcome
        };
        while self.sessions.len() > MAX_SESSIONS {
            self.forget_least_recently_used();
        }
        outcome
    }

    /// Forgets the session written least recently (the lowest `(last_index, client)`, the
    /// same on every replica).
    fn forget_least_recently_used(&mut self) {
        loop {
            let Some((at, client)) = self.by_age.pop() else {
                if self.sessions.is_empty() {
                    return;
                }
                self.by_age = self
                    .sessions
                    .iter()
                    .map(|(&c, s)| (s.last_index, c))
                    .collect();
                self.by_age.sort_unstable_by(|a, b| b.cmp(a));
                continue;
            };
            if self
                .sessions
                .get(&client)
                .is_some_and(|s| s.last_index == at)
            {
                self.sessions.remove(&client);
                return;
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// Up to `limit` pairs whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &[u8], limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.data
            .range_from(prefix)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        self.data.len() == 0
    }

    /// The index of the last entry applied.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Entries whose bytes were no command.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// The whole state as bytes, for a snapshot: the keys and values, the exactly-once
    /// session table (so a write retried after the snapshot is still answered with its first
    /// outcome) and the applied index. Replicas with the same applied
    /// index produce the same bytes.
    ///
    /// ```
    /// use coracle_quic::kv::Kv;
    /// let kv = Kv::new();
    /// let bytes = kv.snapshot()?;
    /// assert_eq!(Kv::restore(&bytes)?.applied(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn snapshot(&self) -> Result<Vec<u8>, KvSnapshotError> {
        let tail = self.snapshot_tail()?;
        let image = ImageHead {
            version: SNAPSHOT_VERSION,
            applied: self.applied,
            malformed: self.malformed,
            data: Pairs(&self.data),
        };
        let out = Vec::with_capacity(self.snapshot_estimate() + tail.len());
        let mut out = postcard::to_extend(&image, out).map_err(snapshot_error)?;
        out.extend_from_slice(&tail);
        Ok(out)
    }

    /// Begins a snapshot of the state as it is now (at [`applied`](Self::applied)), to be
    /// written out a few pairs at a time by [`continue_snapshot`](Self::continue_snapshot)
    /// while writes go on: a node's loop stays responsive however large the state is. The
    /// bytes are those [`snapshot`](Self::snapshot) returns now. A snapshot begun before
    /// and not finished is dropped.
    ///
    /// Until it is finished, the first write to each key not yet written out keeps a copy
    /// of that key's value (at most one per key).
    ///
    /// ```
    /// use coracle_quic::kv::Kv;
    /// let mut kv = Kv::new();
    /// let whole = kv.snapshot()?;
    /// kv.begin_snapshot()?;
    /// let mut bytes = Vec::new(); // a file, in a node: written out between the steps
    /// loop {
    ///     if let Some(done) = kv.continue_snapshot(1000, 1 << 20, &mut bytes) {
    ///         break done?;
    ///     }
    /// }
    /// assert_eq!(bytes, whole);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn begin_snapshot(&mut self) -> Result<(), KvSnapshotError> {
        self.snapshot = None;
        let tail = self.snapshot_tail()?;
        let head = (
            SNAPSHOT_VERSION,
            self.applied,
            self.malformed,
            self.data.len() as u64,
        );
        let out = postcard::to_extend(&head, Vec::new()).map_err(snapshot_error)?;
        self.data.frozen = Some(Frozen::default());
        self.snapshot = Some(SnapshotJob {
            index: self.applied,
            out,
            pairs_left: self.data.len(),
            tail,
        });
        Ok(())
    }

    /// Appends the next bytes of the snapshot begun by
    /// [`begin_snapshot`](Self::begin_snapshot) to `out`: up to `pairs` more pairs, fewer
    /// once `out` holds `max_bytes` (the header comes with the first call, the sessions with
    /// the last). The caller streams `out` to the snapshot's file between
    /// calls, so a snapshot is never whole in memory. `Some` once all is written (and the
    /// store keeps no more copies); `None` while there is more, or if none was begun.
    pub fn continue_snapshot(
        &mut self,
        pairs: usize,
        max_bytes: usize,
        out: &mut Vec<u8>,
    ) -> Option<Result<(), KvSnapshotError>> {
        let job = self.snapshot.as_mut()?;
        out.append(&mut job.out);
        let (written, done) = self.data.write_frozen(out, pairs, max_bytes);
        job.pairs_left = job.pairs_left.saturating_sub(written);
        if !done {
            return None;
        }
        if job.pairs_left != 0 {
            let e = format!("snapshot lacks {} pairs", job.pairs_left);
            return self.end_snapshot(Err(KvSnapshotError(e)));
        }
        out.extend_from_slice(&job.tail);
        self.end_snapshot(Ok(()))
    }

    /// The applied index of the snapshot being written out, if one is.
    pub fn snapshot_in_progress(&self) -> Option<Index> {
        self.snapshot.as_ref().map(|job| job.index)
    }

    fn end_snapshot(
        &mut self,
        result: Result<(), KvSnapshotError>,
    ) -> Option<Result<(), KvSnapshotError>> {
        self.snapshot = None;
        self.data.frozen = None;
        Some(result)
    }

    /// The end of a snapshot: the exactly-once sessions (by client).
    fn snapshot_tail(&self) -> Result<Vec<u8>, KvSnapshotError> {
        let mut sessions: Vec<(u64, SessionImage)> = self
            .sessions
            .iter()
            .map(|(&client, s)| {
                let image = SessionImage {
                    ack_below: s.ack_below,
                    outcomes: s.outcomes.iter().cloned().collect(),
                    last_index: s.last_index,
                };
                (client, image)
            })
            .collect();
        sessions.sort_unstable_by_key(|(client, _)| *client);
        postcard::to_allocvec(&sessions).map_err(snapshot_error)
    }

    /// Bytes of a snapshot's header and pairs, a little over (at most 10 bytes of lengths
    /// a pair): its buffer is allocated once, not doubled and copied.
    fn snapshot_estimate(&self) -> usize {
        self.data.bytes + 10 * self.data.len() + 64
    }

    /// The state [`snapshot`](Self::snapshot) wrote. Bytes of another format version, or
    /// that are no snapshot, are an error (the node stops rather than run with a wrong
    /// state).
    pub fn restore(mut bytes: &[u8]) -> Result<Kv, KvSnapshotError> {
        Self::restore_from(&mut bytes)
    }

    /// Reads the snapshot from `source` a piece at a time, as
    /// [`restore_from`](Self::restore_from) would, without building the store (memory
    /// holds one pair at a time): checks that it is a KV snapshot of this format, and
    /// returns the index it was taken at.
    pub fn check_snapshot(source: &mut impl std::io::Read) -> Result<Index, KvSnapshotError> {
        read_image(source, |_, _| {}).map(|(applied, _, _)| applied)
    }

    /// [`restore`](Self::restore), reading the snapshot from `source` a piece at a time (a
    /// snapshot file): only the state itself is built in memory, never the snapshot's
    /// bytes whole.
    pub fn restore_from(source: &mut impl std::io::Read) -> Result<Kv, KvSnapshotError> {
        let mut pairs = Vec::new();
        let (applied, malformed, sessions) = read_image(source, |k, v| {
            pairs.push((ByteBuf::from(k), ByteBuf::from(v)));
        })?;
        let mut kv = Kv {
            data: Store::from_pairs(pairs),
            applied,
            malformed,
            ..Kv::default()
        };
        for (client, s) in sessions {
            kv.sessions.insert(
                client,
                Session {
                    ack_below: s.ack_below,
                    outcomes: Outcomes::from_unordered(s.outcomes),
                    last_index: s.last_index,
                },
            );
        }
        Ok(kv)
    }
}

/// [`Command`] as [`Kv::apply`] decodes it: the same encoding (postcard goes by variant
/// index and field order), borrowing the keys and values from the entry's bytes. Kept in
/// step with `Command` by a test that converts every variant with an exhaustive match.
#[derive(Debug, PartialEq, Eq, Deserialize)]
enum CommandRef<'a> {
    Write {
        client: u64,
        seq: u64,
        ack_below: u64,
        #[serde(borrow)]
        op: WriteOpRef<'a>,
    },
}

/// [`WriteOp`] borrowing its byte strings (see [`CommandRef`]).
#[derive(Debug, PartialEq, Eq, Deserialize)]
enum WriteOpRef<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
        return_previous: bool,
    },
    Delete {
        key: &'a [u8],
        return_previous: bool,
    },
    Cas {
        key: &'a [u8],
        #[serde(borrow)]
        expected: Option<&'a [u8]>,
        #[serde(borrow)]
        new: Option<&'a [u8]>,
    },
}

/// The sessions of a KV snapshot, as it stores them.
type SessionImages = Vec<(u64, SessionImage)>;

/// Reads a KV snapshot from `source` (buffered, a piece at a time), handing each
/// key-value pair to `on_pair` in order; returns the applied index, the count of malformed
/// commands and the sessions. Bytes of another format version, or no snapshot, are an
/// error.
fn read_image(
    source: &mut impl std::io::Read,
    mut on_pair: impl FnMut(Vec<u8>, Vec<u8>),
) -> Result<(Index, u64, SessionImages), KvSnapshotError> {
    let mut r = std::io::BufReader::with_capacity(256 << 10, source);
    let bad = |what: &str| KvSnapshotError(format!("not a KV snapshot: {what}"));
    let version = read_varint(&mut r).map_err(|e| bad(&e))?;
    let applied = read_varint(&mut r).map_err(|e| bad(&e))?;
    let malformed = read_varint(&mut r).map_err(|e| bad(&e))?;
    if version != u64::from(SNAPSHOT_VERSION) {
        return Err(KvSnapshotError(format!(
            "KV snapshot format {version} is not {SNAPSHOT_VERSION}"
        )));
    }
    let count = read_varint(&mut r).map_err(|e| bad(&e))?;
    for _ in 0..count {
        let k = read_byte_string(&mut r).map_err(|e| bad(&e))?;
        let v = read_byte_string(&mut r).map_err(|e| bad(&e))?;
        on_pair(k, v);
    }
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut rest).map_err(|e| bad(&e.to_string()))?;
    let sessions: SessionImages = postcard::from_bytes(&rest).map_err(|e| bad(&e.to_string()))?;
    Ok((applied, malformed, sessions))
}

/// Reads a LEB128 varint (postcard's integers) of at most 64 bits.
fn read_varint(r: &mut impl std::io::Read) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).map_err(|e| e.to_string())?;
        value |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("an integer longer than 64 bits".into())
}

/// Reads a byte string as postcard writes it (its length, then the bytes), never
/// allocating more than the bytes that are there.
fn read_byte_string<R: std::io::Read>(r: &mut R) -> Result<Vec<u8>, String> {
    let len = read_varint(r)?;
    let mut out = Vec::with_capacity(len.min(64 << 10) as usize);
    let mut bytes = std::io::Read::take(&mut *r, len);
    std::io::Read::read_to_end(&mut bytes, &mut out).map_err(|e| e.to_string())?;
    if out.len() as u64 != len {
        return Err(format!(
            "a byte string of {len} bytes ends after {}",
            out.len()
        ));
    }
    Ok(out)
}

/// Version of the KV snapshot format (2: the node addresses moved to the host's part of
/// the snapshot).
const SNAPSHOT_VERSION: u32 = 2;

/// The start of the KV state as a snapshot stores it (postcard: the version, the applied
/// index, the count of malformed commands, the pairs as byte strings, then the sessions),
/// as [`Kv::snapshot`] writes it, borrowing the store so a snapshot does not copy it first
/// (postcard writes the fields of a struct one after the other, so the sessions follow).
#[derive(Serialize)]
struct ImageHead<'a> {
    version: u32,
    applied: Index,
    malformed: u64,
    data: Pairs<'a>,
}

/// The store's pairs, serialized as a sequence of byte-string pairs.
struct Pairs<'a>(&'a Store);

/// Appends `bytes` as postcard writes a byte string: its length (a LEB128 varint), then
/// the bytes. By hand in the snapshot's hot loop: through serde, postcard extends the
/// buffer byte by byte, which made it most of a snapshot's cost.
fn push_byte_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut len = bytes.len() as u64;
    while len >= 0x80 {
        out.push(len as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
}

impl Serialize for Pairs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(k, v)| (Bytes::new(k), Bytes::new(v))))
    }
}

#[derive(Serialize, Deserialize)]
struct SessionImage {
    ack_below: u64,
    outcomes: Vec<(u64, WriteOutcome)>,
    last_index: Index,
}

/// A KV snapshot that cannot be written or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvSnapshotError(pub String);

impl fmt::Display for KvSnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KV snapshot: {}", self.0)
    }
}

impl std::error::Error for KvSnapshotError {}

fn snapshot_error(e: postcard::Error) -> KvSnapshotError {
    KvSnapshotError(e.to_string())
}

fn apply_op(data: &mut Store, op: WriteOpRef<'_>) -> WriteOutcome {
    match op {
        WriteOpRef::Put {
            key,
            value,
            return_previous,
        } => WriteOutcome::Done {
            previous: data.put(key, value, return_previous),
        },
        WriteOpRef::Delete {
            key,
            return_previous,
        } => {
            let previous = data.remove(key);
            WriteOutcome::Done {
                previous: previous.filter(|_| return_previous),
            }
        }
        WriteOpRef::Cas { key, expected, new } => {
            if data.get(key).map(Vec::as_slice) == expected {
                // The value replaced is the one expected: moved out, not copied.
                let current = match new {
                    Some(v) => data.insert(key, v.to_vec()),
                    None => data.remove(key),
                };
                WriteOutcome::Cas {
                    swapped: true,
                    current,
                }
            } else {
                WriteOutcome::Cas {
                    swapped: false,
                    current: data.get(key).cloned(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, WriteOp};

    /// [`CommandRef`] of `c`: an exhaustive match, so a variant or field added to
    /// [`Command`] or [`WriteOp`] does not compile here until the mirror has it too.
    fn mirror(c: &Command) -> CommandRef<'_> {
        match c {
            Command::Write {
                client,
                seq,
                ack_below,
                op,
            } => CommandRef::Write {
                client: *client,
                seq: *seq,
                ack_below: *ack_below,
                op: match op {
                    WriteOp::Put {
                        key,
                        value,
                        return_previous,
                    } => WriteOpRef::Put {
                        key,
                        value,
                        return_previous: *return_previous,
                    },
                    WriteOp::Delete {
                        key,
                        return_previous,
                    } => WriteOpRef::Delete {
                        key,
                        return_previous: *return_previous,
                    },
                    WriteOp::Cas { key, expected, new } => WriteOpRef::Cas {
                        key,
                        expected: expected.as_deref(),
                        new: new.as_deref(),
                    },
                },
            },
        }
    }

    #[test]
    fn commands_decode_in_place_as_they_were_encoded() {
        let w = |op| Command::Write {
            client: u64::MAX,
            seq: 300,
            ack_below: 2,
            op,
        };
        let commands = [
            w(WriteOp::Put {
                key: b"k".to_vec(),
                value: vec![7; 300],
                return_previous: true,
            }),
            w(WriteOp::Put {
                key: vec![],
                value: vec![],
                return_previous: false,
            }),
            w(WriteOp::Delete {
                key: b"d".to_vec(),
                return_previous: false,
            }),
            w(WriteOp::Cas {
                key: b"c".to_vec(),
                expected: None,
                new: Some(b"n".to_vec()),
            }),
            w(WriteOp::Cas {
                key: b"c".to_vec(),
                expected: Some(vec![]),
                new: None,
            }),
        ];
        for c in &commands {
            let bytes = postcard::to_allocvec(c).unwrap();
            let decoded: CommandRef<'_> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(decoded, mirror(c));
        }
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    fn cmd(client: u64, seq: u64, ack_below: u64, op: WriteOp) -> Vec<u8> {
        postcard::to_allocvec(&Command::Write {
            client,
            seq,
            ack_below,
            op,
        })
        .unwrap()
    }

    /// A put that asks for the previous value.
    fn put(k: &str, v: &str) -> WriteOp {
        WriteOp::Put {
            key: k.into(),
            value: v.into(),
            return_previous: true,
        }
    }

    /// A put that does not.
    fn cheap_put(k: &str, v: &str) -> WriteOp {
        WriteOp::Put {
            key: k.into(),
            value: v.into(),
            return_previous: false,
        }
    }

    fn done(previous: Option<&str>) -> Applied {
        Applied::Write(WriteOutcome::Done {
            previous: previous.map(|p| p.as_bytes().to_vec()),
        })
    }

    #[test]
    fn the_previous_value_is_returned_only_when_asked() {
        let mut kv = Kv::new();
        assert_eq!(kv.apply(1, &cmd(1, 1, 1, cheap_put("k", "1"))), done(None));
        let cheap = cmd(1, 2, 1, cheap_put("k", "2"));
        assert_eq!(kv.apply(2, &cheap), done(None), "not asked: not returned");
        let asked = cmd(1, 3, 1, put("k", "3"));
        assert_eq!(kv.apply(3, &asked), done(Some("2")));
        assert_eq!(kv.get(b"k"), Some(&b"3"[..]));
        // Retries (seq 1..3 are not acknowledged yet) return the first outcome, either
        // way, even though "k" changed since.
        kv.apply(4, &cmd(2, 1, 1, cheap_put("k", "4")));
        assert_eq!(kv.apply(5, &cheap), done(None));
        assert_eq!(kv.apply(6, &asked), done(Some("2")));
        assert_eq!(
            kv.get(b"k"),
            Some(&b"4"[..]),
            "retries are not applied again"
        );
        // Deletes alike.
        let del = |key: &str, return_previous| WriteOp::Delete {
            key: key.into(),
            return_previous,
        };
        let cheap_del = cmd(1, 4, 1, del("k", false));
        assert_eq!(kv.apply(7, &cheap_del), done(None));
        assert_eq!(kv.get(b"k"), None);
        kv.apply(8, &cmd(1, 5, 1, cheap_put("k", "5")));
        let asked_del = cmd(1, 6, 1, del("k", true));
        assert_eq!(kv.apply(9, &asked_del), done(Some("5")));
        assert_eq!(kv.apply(10, &cmd(1, 7, 1, del("k", true))), done(None));
        assert_eq!(kv.apply(11, &cheap_del), done(None));
        assert_eq!(kv.apply(12, &asked_del), done(Some("5")));
        // The outcomes kept hold the previous value only when asked for.
        let session = &kv.sessions[&1];
        let kept: Vec<bool> = session
            .outcomes
            .iter()
            .map(|(_, o)| matches!(o, WriteOutcome::Done { previous: Some(_) }))
            .collect();
        assert_eq!(kept, [false, false, true, false, false, true, false]);
        // And a restored replica answers retries the same.
        let mut back = Kv::restore(&kv.snapshot().unwrap()).unwrap();
        assert_eq!(back.apply(13, &asked), done(Some("2")));
        assert_eq!(back.apply(14, &cheap), done(None));
    }

    #[test]
    fn outcomes_arriving_out_of_order_are_kept_in_order() {
        let o = |n: u8| WriteOutcome::Done {
            previous: Some(vec![n]),
        };
        let mut outcomes = Outcomes::default();
        for seq in [5, 3, 9, 4, 7] {
            outcomes.insert(seq, o(seq as u8));
        }
        let seqs = |os: &Outcomes| os.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        assert_eq!(seqs(&outcomes), [3, 4, 5, 7, 9]);
        assert_eq!(outcomes.get(7), Some(&o(7)));
        assert_eq!(outcomes.get(6), None);
        outcomes.forget_below(5);
        assert_eq!(seqs(&outcomes), [5, 7, 9]);
        outcomes.truncate_front(2);
        assert_eq!(seqs(&outcomes), [7, 9]);
        let back = Outcomes::from_unordered(vec![(9, o(1)), (7, o(7)), (9, o(9))]);
        assert_eq!(seqs(&back), [7, 9]);
        assert_eq!(
            back.get(9),
            Some(&o(9)),
            "the last of equal ones, as a map kept"
        );
    }

    #[test]
    fn the_least_recently_used_session_is_forgotten() {
        let mut kv = Kv::new();
        let mut index = 0;
        let mut apply = |kv: &mut Kv, client: u64, seq: u64| {
            index += 1;
            kv.apply(index, &cmd(client, seq, 1, put(&format!("k{client}"), "v")))
        };
        for client in 1..=MAX_SESSIONS as u64 {
            apply(&mut kv, client, 1);
        }
        // Session 1 writes again: 2 is now the least recently used.
        apply(&mut kv, 1, 2);
        let mut replica = Kv::restore(&kv.snapshot().unwrap()).unwrap();
        let new = MAX_SESSIONS as u64 + 1;
        apply(&mut kv, new, 1);
        assert_eq!(kv.sessions.len(), MAX_SESSIONS);
        assert!(kv.sessions.contains_key(&1) && !kv.sessions.contains_key(&2));
        // 3 writes again: 4 goes next (3's old place in the eviction order is stale).
        apply(&mut kv, 3, 2);
        apply(&mut kv, new + 1, 1);
        assert!(kv.sessions.contains_key(&3) && !kv.sessions.contains_key(&4));
        assert!(kv.sessions.contains_key(&5));
        // A replica restored before (with no eviction order built) forgets the same.
        let mut index = MAX_SESSIONS as u64 + 1;
        for (client, seq) in [(new, 1), (3, 2), (new + 1, 1)] {
            index += 1;
            replica.apply(index, &cmd(client, seq, 1, put(&format!("k{client}"), "v")));
        }
        assert_eq!(replica.snapshot(), kv.snapshot());
        // A retry of a forgotten session's write is applied again (its outcome is gone).
        assert_eq!(
            kv.apply(index + 1, &cmd(2, 1, 1, put("k2", "v"))),
            done(Some("v"))
        );
    }

    #[test]
    fn retries_apply_once_and_acknowledged_ones_are_stale() {
        let mut kv = Kv::new();
        let a = cmd(1, 1, 1, put("k", "1"));
        let b = cmd(1, 2, 1, put("k", "2"));
        assert_eq!(
            kv.apply(1, &a),
            Applied::Write(WriteOutcome::Done { previous: None })
        );
        assert_eq!(
            kv.apply(2, &b),
            Applied::Write(WriteOutcome::Done {
                previous: Some(b"1".to_vec())
            })
        );
        // A late retry of seq 1: the first outcome, and "k" keeps "2".
        assert_eq!(
            kv.apply(3, &a),
            Applied::Write(WriteOutcome::Done { previous: None })
        );
        assert_eq!(kv.get(b"k"), Some(&b"2"[..]));
        // Once acknowledged, a duplicate is stale.
        let c = cmd(1, 3, 3, put("x", "y"));
        kv.apply(4, &c);
        assert_eq!(kv.apply(5, &a), Applied::Write(WriteOutcome::Stale));
        assert_eq!(kv.get(b"k"), Some(&b"2"[..]));
        assert_eq!(kv.apply(6, b"\xff\xff garbage"), Applied::Ignored);
        assert_eq!(kv.malformed(), 1);
    }

    #[test]
    fn byte_strings_are_written_as_postcard_writes_them() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 2_097_152] {
            let bytes = vec![7u8; len];
            let mut out = vec![1, 2];
            push_byte_string(&mut out, &bytes);
            let want = postcard::to_extend(&Bytes::new(&bytes), vec![1, 2]).unwrap();
            assert!(out == want, "length {len}");
        }
    }

    #[test]
    fn a_snapshot_restores_data_and_sessions() {
        let mut kv = Kv::new();
        let a = cmd(1, 1, 1, put("k", "1"));
        kv.apply(1, &a);
        kv.apply(2, &cmd(2, 5, 5, put("j", "2")));
        kv.skip(3);
        kv.skip(4);
        let bytes = kv.snapshot().unwrap();
        let mut back = Kv::restore(&bytes).unwrap();
        assert_eq!(back.snapshot().unwrap(), bytes, "same state, same bytes");
        assert_eq!(back.applied(), 4);
        assert_eq!(back.get(b"k"), Some(&b"1"[..]));
        // The session table came along: a retry gets its first outcome, not a new one.
        kv.apply(5, &cmd(1, 2, 1, put("k", "2")));
        back.apply(5, &cmd(1, 2, 1, put("k", "2")));
        assert_eq!(back.apply(6, &a), kv.apply(6, &a));
        assert_eq!(
            back.apply(6, &a),
            Applied::Write(WriteOutcome::Done { previous: None })
        );
        assert_eq!(back.snapshot(), kv.snapshot());
        assert!(Kv::restore(b"\xff\xff\xff").is_err());
        assert!(Kv::restore(&[]).is_err());
    }

    #[test]
    fn cas_delete_and_prefix_listing() {
        let mut kv = Kv::new();
        let mut i = 0;
        let mut w = |kv: &mut Kv, op| {
            i += 1;
            kv.apply(i, &cmd(9, i, i, op))
        };
        w(&mut kv, put("a/1", "x"));
        w(&mut kv, put("a/2", "y"));
        w(&mut kv, put("b/1", "z"));
        let swapped = w(
            &mut kv,
            WriteOp::Cas {
                key: "a/1".into(),
                expected: Some("x".into()),
                new: Some("x2".into()),
            },
        );
        assert!(matches!(
            swapped,
            Applied::Write(WriteOutcome::Cas { swapped: true, .. })
        ));
        let refused = w(
            &mut kv,
            WriteOp::Cas {
                key: "a/1".into(),
                expected: None,
                new: Some("no".into()),
            },
        );
        assert!(matches!(
            refused,
            Applied::Write(WriteOutcome::Cas { swapped: false, .. })
        ));
        w(
            &mut kv,
            WriteOp::Delete {
                key: "a/2".into(),
                return_previous: true,
            },
        );
        assert_eq!(kv.list(b"a/", 10), vec![(b"a/1".to_vec(), b"x2".to_vec())]);
        assert_eq!(kv.list(b"", 10).len(), 2);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Put(u8, u8, bool),
            Delete(u8, bool),
            Cas(u8, Option<u8>, Option<u8>),
            List(u8, u8),
            Retry(u8),
            Snapshot,
            /// Begin a snapshot written out a few pairs at a time.
            BeginSnapshot,
            /// Write out up to this many more pairs of it.
            Step(u8),
        }

        fn key(k: u8) -> Vec<u8> {
            // Keys of different lengths that share prefixes: "", "a", "aa", "ab", ...
            let k = k % 24;
            (0..k % 4)
                .map(|i| b'a' + (k >> (2 * i)) % 3)
                .chain(std::iter::repeat_n(b'/', usize::from(k / 12)))
                .collect()
        }

        fn value(v: u8) -> Vec<u8> {
            vec![v % 5; usize::from(v % 3)]
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(k, v, p)| Op::Put(k, v, p)),
                2 => (any::<u8>(), any::<bool>()).prop_map(|(k, p)| Op::Delete(k, p)),
                2 => (any::<u8>(), any::<Option<u8>>(), any::<Option<u8>>())
                    .prop_map(|(k, e, n)| Op::Cas(k, e, n)),
                2 => (any::<u8>(), any::<u8>()).prop_map(|(p, l)| Op::List(p, l)),
                1 => any::<u8>().prop_map(Op::Retry),
                1 => Just(Op::Snapshot),
                1 => Just(Op::BeginSnapshot),
                3 => any::<u8>().prop_map(Op::Step),
            ]
        }

        proptest! {
            /// The store answers as a plain ordered map does: outcomes (the previous value
            /// only when asked), reads and prefix listings in key order, across snapshots;
            /// a retry returns the first outcome and changes nothing. A snapshot written
            /// out step by step while writes go on is the snapshot of when it began.
            #[test]
            fn the_store_behaves_as_an_ordered_map(ops in proptest::collection::vec(op(), 1..200)) {
                let mut kv = Kv::new();
                let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
                let mut sent: Vec<(Vec<u8>, Applied)> = Vec::new();
                let mut index = 0;
                // The bytes the snapshot being written out must end as.
                let mut begun: Option<Vec<u8>> = None;
                // What the snapshot begun wrote out so far.
                let mut streamed = Vec::new();
                for op in ops {
                    let (wop, expected) = match op {
                        Op::Put(k, v, p) => {
                            let old = model.insert(key(k), value(v));
                            let op = WriteOp::Put { key: key(k), value: value(v), return_previous: p };
                            (op, WriteOutcome::Done { previous: old.filter(|_| p) })
                        }
                        Op::Delete(k, p) => {
                            let old = model.remove(&key(k));
                            (WriteOp::Delete { key: key(k), return_previous: p },
                             WriteOutcome::Done { previous: old.filter(|_| p) })
                        }
                        Op::Cas(k, e, n) => {
                            let current = model.get(&key(k)).cloned();
                            let swapped = current == e.map(value);
                            if swapped {
                                match n {
                                    Some(n) => model.insert(key(k), value(n)),
                                    None => model.remove(&key(k)),
                                };
                            }
                            let op = WriteOp::Cas { key: key(k), expected: e.map(value), new: n.map(value) };
                            (op, WriteOutcome::Cas { swapped, current })
                        }
                        Op::List(p, limit) => {
                            let prefix = key(p);
                            let limit = usize::from(limit % 8);
                            let want: Vec<_> = model
                                .range(prefix.clone()..)
                                .take_while(|(k, _)| k.starts_with(&prefix))
                                .take(limit)
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect();
                            prop_assert_eq!(kv.list(&prefix, limit), want);
                            continue;
                        }
                        Op::Retry(i) => {
                            if let Some((bytes, first)) = sent.get(usize::from(i) % sent.len().max(1)) {
                                index += 1;
                                prop_assert_eq!(&kv.apply(index, bytes), first);
                            }
                            continue;
                        }
                        Op::Snapshot => {
                            let bytes = kv.snapshot().unwrap();
                            kv = Kv::restore(&bytes).unwrap();
                            prop_assert_eq!(kv.snapshot().unwrap(), bytes);
                            prop_assert_eq!(kv.snapshot_in_progress(), None);
                            begun = None;
                            streamed.clear();
                            continue;
                        }
                        Op::BeginSnapshot => {
                            begun = Some(kv.snapshot().unwrap());
                            streamed.clear();
                            kv.begin_snapshot().unwrap();
                            prop_assert_eq!(kv.snapshot_in_progress(), Some(index));
                            continue;
                        }
                        Op::Step(n) => {
                            if let Some(done) =
                                kv.continue_snapshot(usize::from(n % 4), usize::MAX, &mut streamed)
                            {
                                done.unwrap();
                                prop_assert_eq!(Some(std::mem::take(&mut streamed)), begun.take());
                            }
                            continue;
                        }
                    };
                    index += 1;
                    // Nothing is acknowledged: every write stays retryable.
                    let bytes = cmd(1, index, 1, wop);
                    let applied = kv.apply(index, &bytes);
                    prop_assert_eq!(&applied, &Applied::Write(expected));
                    sent.push((bytes, applied));
                }
                if let Some(want) = begun {
                    let got = loop {
                        // One pair (or the header) a step, each step written out.
                        let mut step = Vec::new();
                        let done = kv.continue_snapshot(1, 1, &mut step);
                        streamed.extend(step);
                        if let Some(done) = done {
                            done.unwrap();
                            break std::mem::take(&mut streamed);
                        }
                    };
                    prop_assert_eq!(got, want);
                }
                prop_assert_eq!(kv.snapshot_in_progress(), None);
                prop_assert_eq!(kv.len(), model.len());
                prop_assert_eq!(kv.is_empty(), model.is_empty());
                for k in 0..24 {
                    prop_assert_eq!(kv.get(&key(k)), model.get(&key(k)).map(Vec::as_slice));
                }
                let all: Vec<_> = model.into_iter().collect();
                prop_assert_eq!(kv.list(b"", usize::MAX), all);
            }
        }
    }
}
