//! Feeds arbitrary bytes to `Opener::open`.
//!
//! The first byte picks a mode:
//!
//! - even: the rest is one received datagram, as is. It must be rejected
//!   (nobody can forge a tag), counted once, and never panic.
//! - odd: the rest drives a session: a peer seals up to 128 genuine
//!   datagrams, then the fuzzer delivers them in any order, any number of
//!   times, some with a byte flipped. Every outcome is checked against a
//!   model of the replay window (a set of delivered counters): a genuine
//!   datagram opens exactly when its counter is new and within the window,
//!   a corrupted one never opens and never moves the window.
#![no_main]

use std::collections::BTreeSet;

use coracle_udp::{
    ClusterKey, Datagram, OpenError, Opener, Sealer, SendCounter, DEFAULT_MTU, REPLAY_WINDOW,
};
use libfuzzer_sys::fuzz_target;

const CLUSTER: u64 = 0x00C0_AC1E;
const ME: u64 = 2;
const PEER: u64 = 1;

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x42; 32])
}

fn opener() -> Opener<4> {
    let mut opener = Opener::new(&key(), CLUSTER, ME);
    opener.add_peer(PEER).expect("room");
    opener.add_peer(3).expect("room");
    opener
}

fn raw(bytes: &[u8]) {
    let mut opener = opener();
    let mut buf = bytes.to_vec();
    let result = opener.open(&mut buf);
    assert!(result.is_err(), "arbitrary bytes opened: {result:?}");
    if bytes.len() > DEFAULT_MTU {
        assert_eq!(result, Err(OpenError::Oversized));
    }
    assert_eq!(opener.drops().total(), 1);
}

fn session(script: &[u8]) {
    let Some((&count, ops)) = script.split_first() else {
        return;
    };
    let count = usize::from(count % 128) + 1;
    let mut counter = SendCounter::resume(None, 1 << 16);
    counter.persisted(0);
    let mut sealer = Sealer::new(&key(), CLUSTER, PEER, counter);
    let sent: Vec<Datagram> = (0..count)
        .map(|i| {
            let mut out = Datagram::new();
            let payload = [i as u8; 7];
            sealer.seal(ME, &payload[..i % 8], &mut out).expect("fits");
            out
        })
        .collect();

    let mut opener = opener();
    let mut delivered = BTreeSet::new();
    let mut failures = 0u64;
    for op in ops.chunks_exact(2) {
        let index = usize::from(op[0]) % count;
        let counter = index as u64;
        let mut buf = sent[index].to_vec();
        let corrupt = op[1] != 0;
        if corrupt {
            let at = usize::from(op[1]) % buf.len();
            buf[at] ^= op[1] | 1;
        }
        let result = opener.open(&mut buf);
        let highest = delivered.last().copied();
        if corrupt {
            assert!(result.is_err(), "corrupted datagram opened: {result:?}");
            failures += 1;
        } else if highest.is_some_and(|h| h >= counter + REPLAY_WINDOW) {
            // Below the window the opener cannot tell a replay from a
            // latecomer: both are too old.
            assert_eq!(result, Err(OpenError::TooOld));
            failures += 1;
        } else if delivered.contains(&counter) {
            assert_eq!(result, Err(OpenError::Replayed));
            failures += 1;
        } else {
            let opened = result.expect("genuine, fresh datagram");
            assert_eq!(opened.header.counter, counter);
            assert_eq!(opened.payload, &[index as u8; 7][..index % 8]);
            delivered.insert(counter);
        }
        assert_eq!(
            opener.window(PEER).and_then(|w| w.highest()),
            delivered.last().copied()
        );
    }
    assert_eq!(opener.drops().total(), failures);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        None => raw(data),
        Some((mode, rest)) if mode & 1 == 0 => raw(rest),
        Some((_, rest)) => session(rest),
    }
});
