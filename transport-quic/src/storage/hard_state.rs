//! The hard state (Figure 2's `currentTerm` and `votedFor`) in its own small file, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory).
//!
//! ```text
//! +------------+-------------+--------------+--------------+-------------+-------------+
//! | "CORAHARD" | version u32 | term u64     | has vote u8  | vote u64    | crc32 u32   |
//! +------------+-------------+--------------+--------------+-------------+-------------+
//! ```
//!
//! 33 bytes, little-endian; the CRC-32 covers the 29 bytes before it. A missing file is the
//! hard state of a new node (term 0, no vote).

use super::dir;
use super::error::FileLogError;
use super::record::le_u64;
use super::segment::FORMAT_VERSION;
use coracle::HardState;
use std::path::Path;

/// Name of the hard-state file.
pub(crate) const FILE: &str = "hard_state";
const MAGIC: &[u8; 8] = b"CORAHARD";
const LEN: usize = 33;

fn encode(hs: HardState) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&hs.current_term.to_le_bytes());
    b[20] = hs.voted_for.is_some() as u8;
    b[21..29].copy_from_slice(&hs.voted_for.unwrap_or(0).to_le_bytes());
    let crc = crc32fast::hash(&b[..29]);
    b[29..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode(b: &[u8]) -> Result<HardState, (u64, &'static str)> {
    if b.len() != LEN {
        return Err((0, "hard state file has the wrong length"));
    }
    if crc32fast::hash(&b[..29]).to_le_bytes() != b[29..] {
        return Err((29, "hard state checksum mismatch"));
    }
    if &b[..8] != MAGIC {
        return Err((0, "not a hard state file"));
    }
    if b[8..12] != FORMAT_VERSION.to_le_bytes() {
        return Err((8, "unknown hard state format version"));
    }
    let voted_for = match b[20] {
        0 => None,
        1 => Some(le_u64(&b[21..29])),
        _ => return Err((20, "bad vote flag")),
    };
    Ok(HardState {
        current_term: le_u64(&b[12..20]),
        voted_for,
    })
}

/// Reads the hard state of `dir`; `None` if it was never written.
pub(crate) fn read(dir: &Path) -> Result<Option<HardState>, FileLogError> {
    dir::read_decoded(dir, FILE, decode)
}

/// Replaces the hard state of `dir` durably and atomically.
pub(crate) fn write(dir: &Path, hs: HardState) -> Result<(), FileLogError> {
    dir::write_atomically(dir, FILE, &[&encode(hs)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_catches_every_flip() {
        let hs = HardState {
            current_term: 9,
            voted_for: Some(3),
        };
        let b = encode(hs);
        assert_eq!(decode(&b), Ok(hs));
        assert_eq!(
            decode(&encode(HardState::default())),
            Ok(HardState::default())
        );
        for i in 0..LEN {
            let mut bad = b;
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
        assert!(decode(&b[..LEN - 1]).is_err());
    }
}
