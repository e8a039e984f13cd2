//! The cluster key and the authenticated encryption of one datagram.
//!
//! # Construction
//!
//! Every datagram is sealed with XChaCha20-Poly1305 under the cluster key
//! `K`, with the 24-byte nonce
//!
//! ```text
//! sender id (8, big-endian) || cluster id (8, big-endian) || counter (8, big-endian)
//! ```
//!
//! and the 33-byte header as associated data. XChaCha20-Poly1305 is, by
//! definition, ChaCha20-Poly1305 (RFC 8439) under the sub-key
//! `HChaCha20(K, sender || cluster)` with the 12-byte nonce
//! `0x00000000 || counter`. We compute it that way: the sub-key depends only
//! on the peer, so it is derived once per peer (when the [`crate::Sealer`]
//! is made, or when a peer is added to the [`crate::Opener`]) and every
//! datagram then costs one plain ChaCha20-Poly1305 call. A test checks that
//! the output is byte for byte the one of the `XChaCha20Poly1305` type.
//!
//! # Why a nonce never repeats
//!
//! The nonce is an injective function of (sender, cluster, counter): all
//! three sit side by side in it, none truncated. So for one cluster key a
//! nonce repeats only if one sender reuses a counter within one cluster.
//! [`crate::SendCounter`] makes counters strictly increasing, across
//! restarts too, and the [`crate::Sealer`] takes every counter from it, so
//! no counter and thus no nonce is ever used twice. Putting the cluster id in
//! the nonce also keeps two clusters that were (wrongly) given the same key
//! apart. A 96-bit ChaCha20-Poly1305 nonce alone could not hold a 64-bit
//! sender id and a 64-bit counter without truncating one of them; deriving a
//! sub-key per sender is what removes that limit.

use chacha20::R20;
use chacha20poly1305::{
    aead::{array::Array, AeadInOut, KeyInit},
    ChaCha20Poly1305, Key, Nonce, Tag,
};
use core::fmt;

use crate::frame::{HEADER_LEN, TAG_LEN};

/// Length of the cluster key in bytes.
pub const KEY_LEN: usize = 32;

/// The secret shared by every node of a cluster.
///
/// Generate it from a good random source (e.g. 32 bytes from the operating
/// system's generator) and distribute it out of band. Its `Debug` output
/// never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl ClusterKey {
    /// Wraps raw key bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// The tag did not verify: the datagram was forged, corrupted or sealed
/// under another key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadTag;

/// The AEAD keyed for one sender of one cluster (see the module docs).
#[derive(Clone)]
pub(crate) struct SenderKey(ChaCha20Poly1305);

impl SenderKey {
    /// `HChaCha20(K, sender || cluster)`, ready to seal or open.
    pub(crate) fn derive(key: &ClusterKey, cluster: u64, sender: u64) -> Self {
        let mut input = [0u8; 16];
        input[..8].copy_from_slice(&sender.to_be_bytes());
        input[8..].copy_from_slice(&cluster.to_be_bytes());
        let subkey: Key = chacha20::hchacha::<R20>(&Key::from(key.0), &Array::from(input));
        Self(ChaCha20Poly1305::new(&subkey))
    }

    fn nonce(counter: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::from(nonce)
    }

    /// Encrypts `body` in place and returns the tag; `None` only if the
    /// body is longer than ChaCha20 can encrypt (256 GiB), which no MTU is.
    pub(crate) fn seal(
        &self,
        header: &[u8; HEADER_LEN],
        counter: u64,
        body: &mut [u8],
    ) -> Option<[u8; TAG_LEN]> {
        let tag = self
            .0
            .encrypt_inout_detached(&Self::nonce(counter), header, body.into())
            .ok()?;
        Some(tag.into())
    }

    /// Verifies the tag and, if it holds, decrypts `body` in place.
    pub(crate) fn open(
        &self,
        header: &[u8; HEADER_LEN],
        counter: u64,
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), BadTag> {
        self.0
            .decrypt_inout_detached(&Self::nonce(counter), header, body.into(), &Tag::from(*tag))
            .map_err(|_| BadTag)
    }
}

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SenderKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    #[test]
    fn is_xchacha20_poly1305_with_sender_cluster_counter_nonce() {
        let key = ClusterKey::from_bytes([7; KEY_LEN]);
        let (cluster, sender, counter) = (0xC1u64 << 40 | 9, 0x5E_u64 << 50 | 3, 0x0102_0304_u64);
        let header = [0x42u8; HEADER_LEN];
        let plain = *b"the quick brown fox jumps over the lazy dog";

        let mut ours = plain;
        let tag = SenderKey::derive(&key, cluster, sender)
            .seal(&header, counter, &mut ours)
            .expect("seal");

        let mut xnonce = [0u8; 24];
        xnonce[..8].copy_from_slice(&sender.to_be_bytes());
        xnonce[8..16].copy_from_slice(&cluster.to_be_bytes());
        xnonce[16..].copy_from_slice(&counter.to_be_bytes());
        let mut theirs = plain;
        let their_tag = XChaCha20Poly1305::new(&Key::from([7; KEY_LEN]))
            .encrypt_inout_detached(&XNonce::from(xnonce), &header, (&mut theirs[..]).into())
            .expect("xchacha seal");

        assert_eq!(ours, theirs);
        assert_eq!(tag, <[u8; TAG_LEN]>::from(their_tag));
        assert_ne!(ours, plain);

        SenderKey::derive(&key, cluster, sender)
            .open(&header, counter, &mut ours, &tag)
            .expect("open");
        assert_eq!(ours, plain);
    }

    #[test]
    fn other_sender_cluster_or_counter_does_not_open() {
        let key = ClusterKey::from_bytes([1; KEY_LEN]);
        let header = [0u8; HEADER_LEN];
        let mut body = [9u8; 20];
        let tag = SenderKey::derive(&key, 1, 2)
            .seal(&header, 3, &mut body)
            .expect("seal");
        for (cluster, sender, counter) in [(1, 2, 4), (1, 3, 3), (2, 2, 3)] {
            let mut copy = body;
            assert_eq!(
                SenderKey::derive(&key, cluster, sender).open(&header, counter, &mut copy, &tag),
                Err(BadTag)
            );
        }
        let other = ClusterKey::from_bytes([2; KEY_LEN]);
        let mut copy = body;
        assert_eq!(
            SenderKey::derive(&other, 1, 2).open(&header, 3, &mut copy, &tag),
            Err(BadTag)
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        extern crate std;
        use std::format;
        let key = ClusterKey::from_bytes([0xAA; KEY_LEN]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("170") && !shown.to_lowercase().contains("aa,"));
    }
}
