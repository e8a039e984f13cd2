//! The key-value state machine the simulated clients use, and how its commands are encoded
//! in log entries, and how the store is serialized into a snapshot.
//!
//! A snapshot's bytes: the last included index and the chain hash of that entry (see
//! [`crate::sim::disk`]), the number of keys, then each key and value in key order, all
//! little-endian `u64`s.

use crate::linearizability::{Key, Op, Output, Value};
use crate::sim::rng::mix64;
use coracle::Index;
use std::collections::HashMap;

/// A client command as carried in a log entry: who sent it, its sequence number at that
/// client, and the operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The client.
    pub client: u64,
    /// The client's sequence number of the operation.
    pub seq: u64,
    /// The operation.
    pub op: Op,
}

const PUT: u8 = 1;
const GET: u8 = 2;
const DELETE: u8 = 3;
const CAS: u8 = 4;

/// The longest encoded command, in bytes.
pub const MAX_COMMAND_LEN: usize = 1 + 8 * 3 + 1 + 8 * 2;

impl Command {
    /// Encodes the command (little-endian, fixed layout).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_COMMAND_LEN);
        let tag = match self.op {
            Op::Put { .. } => PUT,
            Op::Get { .. } => GET,
            Op::Delete { .. } => DELETE,
            Op::CompareAndSet { .. } => CAS,
        };
        out.push(tag);
        out.extend_from_slice(&self.client.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.op.key().to_le_bytes());
        match self.op {
            Op::Put { value, .. } => out.extend_from_slice(&value.to_le_bytes()),
            Op::Get { .. } | Op::Delete { .. } => {}
            Op::CompareAndSet { expected, new, .. } => {
                out.push(expected.is_some() as u8 | (new.is_some() as u8) << 1);
                out.extend_from_slice(&expected.unwrap_or(0).to_le_bytes());
                out.extend_from_slice(&new.unwrap_or(0).to_le_bytes());
            }
        }
        out
    }

    /// Decodes a command; `None` if the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Command> {
        let (&tag, rest) = bytes.split_first()?;
        let word = |i: usize| -> Option<u64> {
            let b = rest.get(i * 8..i * 8 + 8)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        };
        let client = word(0)?;
        let seq = word(1)?;
        let key: Key = word(2)?;
        let op = match tag {
            PUT if rest.len() == 32 => Op::Put {
                key,
                value: word(3)?,
            },
            GET if rest.len() == 24 => Op::Get { key },
            DELETE if rest.len() == 24 => Op::Delete { key },
            CAS if rest.len() == 41 => {
                let flags = rest[24];
                let tail = &rest[25..];
                let expected = u64::from_le_bytes(tail[..8].try_into().ok()?);
                let new = u64::from_le_bytes(tail[8..].try_into().ok()?);
                Op::CompareAndSet {
                    key,
                    expected: (flags & 1 != 0).then_some(expected),
                    new: (flags & 2 != 0).then_some(new),
                }
            }
            _ => return None,
        };
        Some(Command { client, seq, op })
    }
}

/// The replicated key-value store of one node.
#[derive(Clone, Debug, Default)]
pub struct Kv {
    map: HashMap<Key, Value>,
    applied: Index,
}

impl Kv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `op` as the entry at `index` and returns its output.
    pub fn apply(&mut self, index: Index, op: &Op) -> Output {
        self.applied = index;
        let key = op.key();
        let (value, output) = op.apply(self.map.get(&key).copied());
        match value {
            Some(v) => self.map.insert(key, v),
            None => self.map.remove(&key),
        };
        output
    }

    /// Records that the entry at `index` (a no-op) was applied.
    pub fn skip(&mut self, index: Index) {
        self.applied = index;
    }

    /// The last index applied.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// The value of `key`.
    pub fn get(&self, key: Key) -> Option<Value> {
        self.map.get(&key).copied()
    }

    /// A hash of the contents (not of the applied index): equal stores have equal digests.
    pub fn digest(&self) -> u64 {
        self.map.iter().fold(self.map.len() as u64, |h, (&k, &v)| {
            h.wrapping_add(mix64(mix64(k ^ 0x5851_F42D_4C95_7F2D) ^ v))
        })
    }

    /// The store serialized as a snapshot taken at `applied` (which `chain` identifies).
    pub fn snapshot(&self, chain: u64) -> Vec<u8> {
        let mut pairs: Vec<(Key, Value)> = self.map.iter().map(|(&k, &v)| (k, v)).collect();
        pairs.sort_unstable();
        let mut out = Vec::with_capacity(24 + 16 * pairs.len());
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&chain.to_le_bytes());
        out.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
        for (k, v) in pairs {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The store a snapshot holds; `None` if the bytes are not one.
    pub fn restore(bytes: &[u8]) -> Option<Kv> {
        let word = |i: usize| -> Option<u64> {
            let b = bytes.get(i * 8..i * 8 + 8)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        };
        let applied = word(0)?;
        let n = usize::try_from(word(2)?).ok()?;
        if bytes.len() != 24 + 16 * n {
            return None;
        }
        let mut map = HashMap::with_capacity(n);
        for i in 0..n {
            map.insert(word(3 + 2 * i)?, word(4 + 2 * i)?);
        }
        Some(Kv { map, applied })
    }
}

/// The chain hash of the last entry a snapshot covers, read from its bytes.
pub fn snapshot_chain(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let ops = [
            Op::Put { key: 3, value: 9 },
            Op::Get { key: 1 },
            Op::Delete { key: 2 },
            Op::CompareAndSet {
                key: 5,
                expected: None,
                new: Some(4),
            },
            Op::CompareAndSet {
                key: 5,
                expected: Some(4),
                new: None,
            },
        ];
        for op in ops {
            let c = Command {
                client: 7,
                seq: 11,
                op,
            };
            let bytes = c.encode();
            assert!(bytes.len() <= MAX_COMMAND_LEN);
            assert_eq!(Command::decode(&bytes), Some(c));
            assert_eq!(Command::decode(&bytes[..bytes.len() - 1]), None);
        }
        assert_eq!(Command::decode(b""), None);
    }

    #[test]
    fn the_store_follows_the_model() {
        let mut kv = Kv::new();
        assert_eq!(kv.apply(1, &Op::Get { key: 1 }), Output::Read(None));
        assert_eq!(kv.apply(2, &Op::Put { key: 1, value: 5 }), Output::Done);
        let cas = Op::CompareAndSet {
            key: 1,
            expected: Some(5),
            new: Some(6),
        };
        assert_eq!(kv.apply(3, &cas), Output::Cas(true));
        assert_eq!(kv.apply(4, &cas), Output::Cas(false));
        assert_eq!(kv.get(1), Some(6));
        kv.apply(5, &Op::Delete { key: 1 });
        assert_eq!(kv.get(1), None);
        assert_eq!(kv.applied(), 5);
    }

    #[test]
    fn snapshots_round_trip() {
        let mut kv = Kv::new();
        kv.apply(1, &Op::Put { key: 1, value: 5 });
        kv.apply(2, &Op::Put { key: 7, value: 9 });
        let bytes = kv.snapshot(0xABCD);
        assert_eq!(snapshot_chain(&bytes), Some(0xABCD));
        let back = Kv::restore(&bytes).expect("restore");
        assert_eq!(
            (back.get(1), back.get(7), back.applied()),
            (Some(5), Some(9), 2)
        );
        assert_eq!(back.digest(), kv.digest());
        assert_ne!(Kv::new().digest(), kv.digest());
        assert!(Kv::restore(&bytes[..bytes.len() - 1]).is_none());
    }
}
