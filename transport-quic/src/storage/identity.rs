//! Who a data directory belongs to: the cluster, the node and the directory's
//! **incarnation**, a random number drawn when the directory is initialised.
//!
//! ```text
//! +------------+-------------+-------------+-------------+-----------------+-----------+
//! | "CORAIDEN" | version u32 | cluster u64 | node u64    | incarnation u64 | crc32 u32 |
//! +------------+-------------+-------------+-------------+-----------------+-----------+
//! ```
//!
//! 40 bytes, little-endian; the CRC-32 covers the 36 bytes before it. Written once,
//! atomically, as the last step of initialising a directory (after the hard state and the
//! first segment, so a crash during initialisation leaves a directory that is adopted on
//! the next open, never one that looks damaged), and never changed, except by a recovery
//! after losing a quorum ([`FileLog::force_new_cluster`](super::FileLog::force_new_cluster)),
//! which makes the directory one of a new cluster with a new incarnation.
//!
//! Its presence is what tells a directory whose files went missing from a new one: with
//! it, a missing hard state or a missing log is damage ([`Damage`](super::Damage)); without
//! it and without any other file, the directory is new. A directory written before
//! identities existed (hard state, segments, no identity) is adopted: given an identity if
//! its files are consistent, refused if not.
//!
//! The incarnation is what a node announces to its peers when they connect
//! ([`hello`](crate::hello)): a node whose directory was replaced (a lost disk) comes back
//! with another incarnation, and its peers refuse it as the voter it was.

use super::dir;
use super::error::FileLogError;
use super::record::le_u64;
use coracle::NodeId;
use std::path::Path;

/// Name of the identity file.
pub(crate) const FILE: &str = "identity";
const MAGIC: &[u8; 8] = b"CORAIDEN";
const VERSION: u32 = 1;
const LEN: usize = 40;

/// Who a data directory belongs to ([module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirIdentity {
    /// The cluster id (0: not given when the directory was initialised).
    pub cluster: u64,
    /// The node id (0: not given when the directory was initialised).
    pub node: NodeId,
    /// Random, drawn when the directory was initialised; never 0.
    pub incarnation: u64,
}

impl DirIdentity {
    /// A new identity for `cluster`/`node` with a fresh random incarnation.
    pub(crate) fn new(cluster: u64, node: NodeId) -> DirIdentity {
        DirIdentity {
            cluster,
            node,
            incarnation: crate::random_u64().max(1),
        }
    }
}

fn encode(id: &DirIdentity) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&id.cluster.to_le_bytes());
    b[20..28].copy_from_slice(&id.node.to_le_bytes());
    b[28..36].copy_from_slice(&id.incarnation.to_le_bytes());
    let crc = crc32fast::hash(&b[..36]);
    b[36..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Result<DirIdentity, (u64, &'static str)> {
    if b.len() != LEN {
        return Err((0, "identity file has the wrong length"));
    }
    if crc32fast::hash(&b[..36]).to_le_bytes() != b[36..] {
        return Err((36, "identity checksum mismatch"));
    }
    if &b[..8] != MAGIC {
        return Err((0, "not an identity file"));
    }
    if b[8..12] != VERSION.to_le_bytes() {
        return Err((8, "unknown identity format version"));
    }
    let incarnation = le_u64(&b[28..36]);
    if incarnation == 0 {
        return Err((28, "identity without an incarnation"));
    }
    Ok(DirIdentity {
        cluster: le_u64(&b[12..20]),
        node: le_u64(&b[20..28]),
        incarnation,
    })
}

/// Reads the identity of `dir`; `None` if it has none.
pub(crate) fn read(dir: &Path) -> Result<Option<DirIdentity>, FileLogError> {
    dir::read_decoded(dir, FILE, decode)
}

/// Writes the identity of `dir` durably and atomically.
pub(crate) fn write(dir: &Path, id: &DirIdentity) -> Result<(), FileLogError> {
    dir::write_atomically(dir, FILE, &[&encode(id)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_catches_every_flip() {
        let id = DirIdentity::new(7, 3);
        assert_ne!(id.incarnation, 0);
        assert_ne!(id.incarnation, DirIdentity::new(7, 3).incarnation);
        let b = encode(&id);
        assert_eq!(decode(&b), Ok(id));
        for i in 0..LEN {
            let mut bad = b;
            bad[i] ^= 0x04;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
        assert!(decode(&b[..LEN - 1]).is_err());
    }
}
