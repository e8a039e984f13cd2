//! The incarnation of every member a node has talked to, kept durably in its data
//! directory (file `incarnations`), so that a member whose data directory was replaced (a
//! lost disk) is recognised when it comes back: it announces another incarnation
//! ([`hello`](crate::hello)), and Raft traffic from it is refused.
//!
//! ```text
//! +------------+-------------+-----------+--------------------------------------+-----------+
//! | "CORAINCS" | version u32 | count u32 | count × (node u64, incarnation u64,  | crc32 u32 |
//! |            |             |           |          recorded at index u64)      |           |
//! +------------+-------------+-----------+--------------------------------------+-----------+
//! ```
//!
//! Little-endian, replaced atomically. A member is recorded the first time it connects,
//! durably, before any of its Raft messages is taken. Its record is forgotten when the
//! node applies a configuration without it ([`Incarnations::forget_absent`]), so the
//! repair of a lost disk (remove the member, add it back as a learner, promote it) lets
//! the new incarnation in. A configuration applied again after a restart, older than the
//! record (the applied index at which the member was recorded), forgets nothing.

use super::dir;
use super::error::FileLogError;
use super::record::le_u64;
use coracle::{Index, NodeId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Name of the file.
pub(crate) const FILE: &str = "incarnations";
const MAGIC: &[u8; 8] = b"CORAINCS";
const VERSION: u32 = 1;
const RECORD: usize = 24;

/// What a node knows of one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Known {
    incarnation: u64,
    /// The node's applied index when the member was recorded.
    recorded_at: Index,
}

/// What [`Incarnations::check`] decided about a member's announced incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The incarnation this node knows the member by.
    Known,
    /// A member this node had not talked to (since it was last removed): recorded.
    New,
    /// Another incarnation than the one this node knows: its data directory was replaced.
    Replaced {
        /// The incarnation this node knows it by.
        known: u64,
    },
}

/// The incarnations of the members a node has talked to ([module docs](self)). Shared by
/// the transport (which checks them) and the node's loop (which forgets them).
#[derive(Debug)]
pub struct Incarnations {
    dir: PathBuf,
    known: Mutex<BTreeMap<NodeId, Known>>,
    applied: AtomicU64,
}

impl Incarnations {
    /// Reads the record of the data directory `dir` (empty if it has none).
    pub fn open(dir: &Path) -> Result<Incarnations, FileLogError> {
        let known = dir::read_decoded(dir, FILE, decode)?.unwrap_or_default();
        Ok(Incarnations {
            dir: dir.to_path_buf(),
            known: Mutex::new(known),
            applied: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node's applied index, kept up to date by its loop (the records made from now
    /// on are made "at" it).
    pub fn set_applied(&self, index: Index) {
        self.applied.store(index, Ordering::Relaxed);
    }

    /// Checks the incarnation `peer` announced; records it durably (blocking: a file
    /// replaced with two fsyncs) if `peer` is new.
    pub fn check(&self, peer: NodeId, incarnation: u64) -> Result<Verdict, FileLogError> {
        let mut known = self.lock();
        match known.get(&peer) {
            Some(k) if k.incarnation == incarnation => Ok(Verdict::Known),
            Some(k) => Ok(Verdict::Replaced {
                known: k.incarnation,
            }),
            None => {
                let mut next = known.clone();
                next.insert(
                    peer,
                    Known {
                        incarnation,
                        recorded_at: self.applied.load(Ordering::Relaxed),
                    },
                );
                dir::write_atomically(&self.dir, FILE, &[&encode(&next)])?;
                *known = next;
                Ok(Verdict::New)
            }
        }
    }

    /// The incarnation `peer` is known by, if it is.
    pub fn known(&self, peer: NodeId) -> Option<u64> {
        self.lock().get(&peer).map(|k| k.incarnation)
    }

    /// A configuration of `members`, at log index `index`, was applied: forgets the
    /// members not in it that were recorded before it (blocking: rewrites the file if
    /// anything is forgotten). Returns the ids forgotten.
    pub fn forget_absent(
        &self,
        members: &[NodeId],
        index: Index,
    ) -> Result<Vec<NodeId>, FileLogError> {
        let mut known = self.lock();
        let gone: Vec<NodeId> = known
            .iter()
            .filter(|(id, k)| !members.contains(id) && k.recorded_at < index)
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let mut next = known.clone();
        for id in &gone {
            next.remove(id);
        }
        dir::write_atomically(&self.dir, FILE, &[&encode(&next)])?;
        *known = next;
        Ok(gone)
    }
}

fn encode(known: &BTreeMap<NodeId, Known>) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + known.len() * RECORD + 4);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(known.len() as u32).to_le_bytes());
    for (id, k) in known {
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&k.incarnation.to_le_bytes());
        b.extend_from_slice(&k.recorded_at.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Result<BTreeMap<NodeId, Known>, (u64, &'static str)> {
    if b.len() < 20 {
        return Err((0, "incarnations file is too short"));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err((body.len() as u64, "incarnations checksum mismatch"));
    }
    if &body[..8] != MAGIC {
        return Err((0, "not an incarnations file"));
    }
    if body[8..12] != VERSION.to_le_bytes() {
        return Err((8, "unknown incarnations format version"));
    }
    let count = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
    let records = &body[16..];
    if count.checked_mul(RECORD) != Some(records.len()) {
        return Err((12, "incarnations count does not match the file size"));
    }
    Ok(records
        .chunks_exact(RECORD)
        .map(|r| {
            (
                le_u64(&r[..8]),
                Known {
                    incarnation: le_u64(&r[8..16]),
                    recorded_at: le_u64(&r[16..24]),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn members_are_recorded_durably_checked_and_forgotten_when_removed() {
        let dir = std::env::temp_dir().join(format!("coracle-incs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let book = Incarnations::open(&dir).unwrap();
        book.set_applied(10);
        assert_eq!(book.check(2, 0xaaaa).unwrap(), Verdict::New);
        assert_eq!(book.check(3, 0xbbbb).unwrap(), Verdict::New);
        assert_eq!(book.check(2, 0xaaaa).unwrap(), Verdict::Known);
        // Reopened (a restart): still known; a new incarnation is refused.
        let book = Incarnations::open(&dir).unwrap();
        assert_eq!(
            book.check(3, 0xcccc).unwrap(),
            Verdict::Replaced { known: 0xbbbb }
        );
        // A configuration without 3, older than the record (replayed after a restart),
        // forgets nothing; a newer one forgets it, durably.
        assert!(book.forget_absent(&[1, 2], 10).unwrap().is_empty());
        assert_eq!(book.forget_absent(&[1, 2], 11).unwrap(), vec![3]);
        let book = Incarnations::open(&dir).unwrap();
        assert_eq!(book.known(3), None);
        assert_eq!(book.known(2), Some(0xaaaa));
        assert_eq!(book.check(3, 0xcccc).unwrap(), Verdict::New);
        // Damage is an error, never an empty record.
        let path = dir.join(FILE);
        let mut bytes = fs::read(&path).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            assert!(decode(&bytes).is_err(), "flip at {i}");
            bytes[i] ^= 1;
        }
        bytes.truncate(bytes.len() - 1);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Incarnations::open(&dir),
            Err(FileLogError::Corrupt { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
