//! The reference state machine: a key-value store with exactly-once writes.
//!
//! Every write carries a client session id and a sequence number. The store remembers the
//! outcome of each write of a session until the client acknowledges it (`ack_below`), so a
//! retried write (after a timeout, a lost answer or a new leader) returns the first
//! outcome instead of being applied again (thesis 6.3). Sessions are bounded: past
//! [`MAX_SESSIONS`] the least recently used one is forgotten, deterministically (by log
//! index), so every replica forgets the same one.
//!
//! ```
//! use coracle_quic::kv::{Applied, Kv};
//! use coracle_quic::protocol::{Command, WriteOp, WriteOutcome};
//! let mut kv = Kv::new();
//! let put = Command::Write { client: 7, seq: 1, ack_below: 1, op: WriteOp::Put { key: b"k".to_vec(), value: b"v".to_vec() } };
//! let bytes = postcard::to_allocvec(&put).unwrap();
//! assert_eq!(kv.apply(1, &bytes), Applied::Write(WriteOutcome::Done { previous: None }));
//! // The same request again (a retry): the first outcome, not applied twice.
//! assert_eq!(kv.apply(2, &bytes), Applied::Write(WriteOutcome::Done { previous: None }));
//! assert_eq!(kv.get(b"k"), Some(&b"v"[..]));
//! ```

use crate::protocol::{Command, WriteOp, WriteOutcome};
use coracle::{Index, NodeId};
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Sessions remembered at most.
pub const MAX_SESSIONS: usize = 65_536;
/// Unacknowledged outcomes remembered per session at most.
pub const MAX_OUTCOMES_PER_SESSION: usize = 4096;

#[derive(Debug, Default, Clone)]
struct Session {
    ack_below: u64,
    outcomes: BTreeMap<u64, WriteOutcome>,
    last_index: Index,
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A client's write, with its outcome.
    Write(WriteOutcome),
    /// Node `.0` listens at `.1`.
    Address(NodeId, String),
    /// Bytes that are no command.
    Ignored,
}

/// The replicated key-value store.
#[derive(Debug, Default, Clone)]
pub struct Kv {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    sessions: HashMap<u64, Session>,
    by_age: BTreeSet<(Index, u64)>,
    addresses: BTreeMap<NodeId, String>,
    applied: Index,
    malformed: u64,
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
        let command: Command = match postcard::from_bytes(data) {
            Ok(c) => c,
            Err(_) => {
                self.malformed += 1;
                return Applied::Ignored;
            }
        };
        match command {
            Command::SetAddress { id, addr } => {
                self.addresses.insert(id, addr.clone());
                Applied::Address(id, addr)
            }
            Command::Write {
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
        op: WriteOp,
    ) -> WriteOutcome {
        let session = self.sessions.entry(client).or_default();
        self.by_age.remove(&(session.last_index, client));
        session.last_index = index;
        self.by_age.insert((index, client));
        session.ack_below = session.ack_below.max(ack_below);
        let ack = session.ack_below;
        session.outcomes.retain(|&s, _| s >= ack);
        let outcome = if seq < session.ack_below {
            WriteOutcome::Stale
        } else if let Some(done) = session.outcomes.get(&seq) {
            done.clone()
        } else {
            let outcome = apply_op(&mut self.data, op);
            session.outcomes.insert(seq, outcome.clone());
            while session.outcomes.len() > MAX_OUTCOMES_PER_SESSION {
                session.outcomes.pop_first();
            }
            outcome
        };
        while self.sessions.len() > MAX_SESSIONS {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.sessions.remove(&oldest);
        }
        outcome
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// Up to `limit` pairs whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &[u8], limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.data
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The index of the last entry applied.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Node addresses learned from the log.
    pub fn addresses(&self) -> &BTreeMap<NodeId, String> {
        &self.addresses
    }

    /// Entries whose bytes were no command.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// The whole state as bytes, for a snapshot: the keys and values, the exactly-once
    /// session table (so a write retried after the snapshot is still answered with its first
    /// outcome), the node addresses and the applied index. Replicas with the same applied
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
        let mut sessions: Vec<(u64, SessionImage)> = self
            .sessions
            .iter()
            .map(|(&client, s)| {
                let image = SessionImage {
                    ack_below: s.ack_below,
                    outcomes: s.outcomes.iter().map(|(&q, o)| (q, o.clone())).collect(),
                    last_index: s.last_index,
                };
                (client, image)
            })
            .collect();
        sessions.sort_unstable_by_key(|(client, _)| *client);
        let image = ImageOut {
            version: SNAPSHOT_VERSION,
            applied: self.applied,
            malformed: self.malformed,
            data: Pairs(&self.data),
            sessions,
            addresses: self
                .addresses
                .iter()
                .map(|(&id, a)| (id, a.as_str()))
                .collect(),
        };
        postcard::to_allocvec(&image).map_err(|e| KvSnapshotError(e.to_string()))
    }

    /// The state [`snapshot`](Self::snapshot) wrote. Bytes of another format version, or
    /// that are no snapshot, are an error (the node stops rather than run with a wrong
    /// state).
    pub fn restore(bytes: &[u8]) -> Result<Kv, KvSnapshotError> {
        let image: Image = postcard::from_bytes(bytes)
            .map_err(|e| KvSnapshotError(format!("not a KV snapshot: {e}")))?;
        if image.version != SNAPSHOT_VERSION {
            return Err(KvSnapshotError(format!(
                "KV snapshot format {} is not {SNAPSHOT_VERSION}",
                image.version
            )));
        }
        let mut kv = Kv {
            data: image
                .data
                .into_iter()
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect(),
            applied: image.applied,
            malformed: image.malformed,
            addresses: image.addresses.into_iter().collect(),
            ..Kv::default()
        };
        for (client, s) in image.sessions {
            kv.by_age.insert((s.last_index, client));
            kv.sessions.insert(
                client,
                Session {
                    ack_below: s.ack_below,
                    outcomes: s.outcomes.into_iter().collect(),
                    last_index: s.last_index,
                },
            );
        }
        Ok(kv)
    }
}

/// Version of the KV snapshot format.
const SNAPSHOT_VERSION: u32 = 1;

/// The KV state as a snapshot stores it (postcard). Keys and values are byte strings
/// (`serde_bytes`: one copy each, not a sequence of single bytes).
#[derive(Deserialize)]
struct Image {
    version: u32,
    applied: Index,
    malformed: u64,
    data: Vec<(ByteBuf, ByteBuf)>,
    sessions: Vec<(u64, SessionImage)>,
    addresses: Vec<(NodeId, String)>,
}

/// [`Image`] as it is written: borrowing the store, so a snapshot does not copy it first.
#[derive(Serialize)]
struct ImageOut<'a> {
    version: u32,
    applied: Index,
    malformed: u64,
    data: Pairs<'a>,
    sessions: Vec<(u64, SessionImage)>,
    addresses: Vec<(NodeId, &'a str)>,
}

/// The store's pairs, serialized as a sequence of byte-string pairs (the shape of
/// [`Image::data`]).
struct Pairs<'a>(&'a BTreeMap<Vec<u8>, Vec<u8>>);

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

fn apply_op(data: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: WriteOp) -> WriteOutcome {
    match op {
        WriteOp::Put { key, value } => WriteOutcome::Done {
            previous: data.insert(key, value),
        },
        WriteOp::Delete { key } => WriteOutcome::Done {
            previous: data.remove(&key),
        },
        WriteOp::Cas { key, expected, new } => {
            let current = data.get(&key).cloned();
            if current == expected {
                match new {
                    Some(v) => data.insert(key, v),
                    None => data.remove(&key),
                };
                WriteOutcome::Cas {
                    swapped: true,
                    current,
                }
            } else {
                WriteOutcome::Cas {
                    swapped: false,
                    current,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(client: u64, seq: u64, ack_below: u64, op: WriteOp) -> Vec<u8> {
        postcard::to_allocvec(&Command::Write {
            client,
            seq,
            ack_below,
            op,
        })
        .unwrap()
    }

    fn put(k: &str, v: &str) -> WriteOp {
        WriteOp::Put {
            key: k.into(),
            value: v.into(),
        }
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
    fn a_snapshot_restores_data_sessions_and_addresses() {
        let mut kv = Kv::new();
        let a = cmd(1, 1, 1, put("k", "1"));
        kv.apply(1, &a);
        kv.apply(2, &cmd(2, 5, 5, put("j", "2")));
        let addr = postcard::to_allocvec(&Command::SetAddress {
            id: 4,
            addr: "127.0.0.1:9".into(),
        })
        .unwrap();
        kv.apply(3, &addr);
        kv.skip(4);
        let bytes = kv.snapshot().unwrap();
        let mut back = Kv::restore(&bytes).unwrap();
        assert_eq!(back.snapshot().unwrap(), bytes, "same state, same bytes");
        assert_eq!(back.applied(), 4);
        assert_eq!(back.get(b"k"), Some(&b"1"[..]));
        assert_eq!(
            back.addresses().get(&4).map(String::as_str),
            Some("127.0.0.1:9")
        );
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
        w(&mut kv, WriteOp::Delete { key: "a/2".into() });
        assert_eq!(kv.list(b"a/", 10), vec![(b"a/1".to_vec(), b"x2".to_vec())]);
        assert_eq!(kv.list(b"", 10).len(), 2);
    }
}
