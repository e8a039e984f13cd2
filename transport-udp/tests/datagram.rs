//! Sealing and opening whole datagrams: the round trip, and every kind of
//! bad datagram rejected with its own error, counted, and never a panic.

use coracle_udp::{
    ClusterKey, CounterError, Datagram, Header, OpenError, Opener, SealError, Sealer, SendCounter,
    DEFAULT_MTU, HEADER_LEN, OVERHEAD, PROTOCOL_VERSION, REPLAY_WINDOW, TAG_LEN,
};

const CLUSTER: u64 = 0x00C0_FFEE_0000_0001;
const ALICE: u64 = 1;
const BOB: u64 = 2;
const CAROL: u64 = 3;

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x5A; 32])
}

fn ready_counter() -> SendCounter {
    let mut counter = SendCounter::resume(None, 1 << 20);
    let mark = counter.persist_due().expect("a first mark is due");
    counter.persisted(mark);
    counter
}

fn sealer(node: u64) -> Sealer {
    Sealer::new(&key(), CLUSTER, node, ready_counter())
}

/// Bob, who knows Alice and Carol.
fn bob() -> Opener<4> {
    let mut bob = Opener::new(&key(), CLUSTER, BOB);
    bob.add_peer(ALICE).expect("room");
    bob.add_peer(CAROL).expect("room");
    bob
}

fn seal(from: &mut Sealer, to: u64, payload: &[u8]) -> Datagram {
    let mut out = Datagram::new();
    from.seal(to, payload, &mut out).expect("seal");
    out
}

/// Opens a copy of `datagram`, so the caller can use it again.
fn open_copy(opener: &mut Opener<4>, datagram: &[u8]) -> Result<(Header, Vec<u8>), OpenError> {
    let mut buf = datagram.to_vec();
    opener
        .open(&mut buf)
        .map(|opened| (opened.header, opened.payload.to_vec()))
}

/// splitmix64: a deterministic PRNG for the garbage tests.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_u64() as u8;
        }
    }
}

#[test]
fn round_trip() {
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    for (i, payload) in [&b""[..], b"x", b"append entries", &[0xFF; 1151]]
        .into_iter()
        .enumerate()
    {
        let datagram = seal(&mut alice, BOB, payload);
        assert_eq!(datagram.len(), OVERHEAD + payload.len());
        if payload.len() >= 8 {
            assert_ne!(&datagram[HEADER_LEN..HEADER_LEN + payload.len()], payload);
        }
        let (header, opened) = open_copy(&mut bob, &datagram).expect("authentic");
        assert_eq!(opened, payload);
        assert_eq!(
            header,
            Header {
                version: PROTOCOL_VERSION,
                cluster: CLUSTER,
                sender: ALICE,
                receiver: BOB,
                counter: i as u64,
            }
        );
        assert_eq!(
            Header::decode(datagram.first_chunk().expect("header")),
            header
        );
    }
    assert_eq!(bob.drops().total(), 0);
    assert_eq!(bob.window(ALICE).and_then(|w| w.highest()), Some(3));
}

#[test]
fn payload_is_a_slice_of_the_callers_buffer() {
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    let mut datagram = seal(&mut alice, BOB, b"in place");
    let start = datagram.as_ptr() as usize;
    let opened = bob.open(&mut datagram).expect("authentic");
    assert_eq!(opened.payload.as_ptr() as usize, start + HEADER_LEN);
}

#[test]
fn two_senders_with_the_same_counters_both_open() {
    let mut alice = sealer(ALICE);
    let mut carol = sealer(CAROL);
    let mut bob = bob();
    for _ in 0..3 {
        let a = seal(&mut alice, BOB, b"same");
        let c = seal(&mut carol, BOB, b"same");
        assert_eq!(a[25..33], c[25..33], "same counter");
        assert_ne!(a[HEADER_LEN..], c[HEADER_LEN..], "different keystream");
        open_copy(&mut bob, &a).expect("alice");
        open_copy(&mut bob, &c).expect("carol");
    }
}

#[test]
fn seal_rejects_payload_over_the_mtu_without_using_a_counter() {
    let mut alice = sealer(ALICE);
    let mut small: Datagram<64> = Datagram::new();
    let max = 64 - OVERHEAD;
    assert_eq!(
        alice.seal(BOB, &[0; 16], &mut small),
        Err(SealError::PayloadTooLarge { len: 16, max })
    );
    assert!(small.is_empty());
    assert_eq!(alice.counter().peek(), 0, "no counter used");
    let header = alice.seal(BOB, &[0; 15], &mut small).expect("fits exactly");
    assert_eq!(header.counter, 0);
    assert_eq!(small.len(), 64);

    let mut big: Datagram = Datagram::new();
    assert_eq!(
        alice.seal(BOB, &[0; DEFAULT_MTU - OVERHEAD + 1], &mut big),
        Err(SealError::PayloadTooLarge {
            len: DEFAULT_MTU - OVERHEAD + 1,
            max: 1151
        })
    );
}

#[test]
fn seal_in_place_matches_seal() {
    let mut a1 = sealer(ALICE);
    let mut a2 = sealer(ALICE);
    let copied = seal(&mut a1, BOB, b"zero copy");
    let mut in_place: Datagram = Datagram::new();
    in_place.resize(HEADER_LEN, 0xEE).expect("room");
    in_place.extend_from_slice(b"zero copy").expect("room");
    a2.seal_in_place(BOB, &mut in_place).expect("fits");
    assert_eq!(copied, in_place);

    let mut short: Datagram = Datagram::new();
    short.resize(HEADER_LEN - 1, 0).expect("room");
    assert_eq!(
        a2.seal_in_place(BOB, &mut short),
        Err(SealError::NoHeaderRoom)
    );
    let mut full: Datagram<64> = Datagram::new();
    full.resize(64 - TAG_LEN + 1, 0).expect("room");
    assert!(matches!(
        a2.seal_in_place(BOB, &mut full),
        Err(SealError::PayloadTooLarge { .. })
    ));
}

#[test]
fn seal_without_a_durable_mark_fails() {
    let mut alice = Sealer::new(&key(), CLUSTER, ALICE, SendCounter::resume(None, 4));
    let mut out: Datagram = Datagram::new();
    assert_eq!(
        alice.seal(BOB, b"early", &mut out),
        Err(SealError::Counter(CounterError::AwaitingPersist))
    );
    assert!(out.is_empty());
    let mark = alice.counter().persist_due().expect("due");
    alice.counter_mut().persisted(mark);
    alice.seal(BOB, b"now", &mut out).expect("fits");
}

/// The error each header byte's corruption gives (with the sender id still
/// naming a known peer for the sender bytes, see the test).
fn expected_for_header_byte(at: usize) -> OpenError {
    match at {
        0 => OpenError::WrongVersion,
        1..=8 => OpenError::WrongCluster,
        9..=16 => OpenError::Forged, // sender: Alice -> Carol, who is known
        17..=24 => OpenError::NotForUs,
        _ => OpenError::Forged, // counter
    }
}

#[test]
fn forged_header_byte_is_rejected() {
    let mut alice = sealer(ALICE);
    let datagram = seal(&mut alice, BOB, b"header is authenticated");
    for at in 0..HEADER_LEN {
        let mut bob = bob();
        let mut forged = datagram.clone();
        if (9..=16).contains(&at) {
            // Turn the sender into another known peer: only the tag can tell.
            forged[9..17].copy_from_slice(&CAROL.to_be_bytes());
        } else {
            forged[at] ^= 0x01;
        }
        let expected = expected_for_header_byte(at);
        assert_eq!(open_copy(&mut bob, &forged), Err(expected), "byte {at}");
        assert_eq!(bob.drops().get(expected), 1);
        assert_eq!(bob.drops().total(), 1);
        // The genuine datagram still opens: a forgery does not move the window.
        open_copy(&mut bob, &datagram).expect("genuine");
    }
}

#[test]
fn forged_sender_of_unknown_node_is_unknown_sender() {
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    let mut forged = seal(&mut alice, BOB, b"x");
    forged[9..17].copy_from_slice(&99u64.to_be_bytes());
    assert_eq!(open_copy(&mut bob, &forged), Err(OpenError::UnknownSender));
    assert_eq!(bob.drops().unknown_sender, 1);
}

#[test]
fn forged_ciphertext_and_tag_bytes_are_rejected() {
    let mut alice = sealer(ALICE);
    let datagram = seal(&mut alice, BOB, b"every byte counts");
    let mut bob = bob();
    for at in HEADER_LEN..datagram.len() {
        for bit in [0x01, 0x80] {
            let mut forged = datagram.clone();
            forged[at] ^= bit;
            assert_eq!(
                open_copy(&mut bob, &forged),
                Err(OpenError::Forged),
                "byte {at}"
            );
        }
    }
    assert_eq!(bob.drops().forged, 2 * (datagram.len() - HEADER_LEN) as u64);
    open_copy(&mut bob, &datagram).expect("genuine still opens");
}

#[test]
fn wrong_key_is_forged() {
    let mut mallory = Sealer::new(
        &ClusterKey::from_bytes([0xA5; 32]),
        CLUSTER,
        ALICE,
        ready_counter(),
    );
    let mut bob = bob();
    let datagram = seal(&mut mallory, BOB, b"same ids, other key");
    assert_eq!(open_copy(&mut bob, &datagram), Err(OpenError::Forged));
}

#[test]
fn replayed_is_rejected() {
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    let datagram = seal(&mut alice, BOB, b"once");
    open_copy(&mut bob, &datagram).expect("first");
    for _ in 0..3 {
        assert_eq!(open_copy(&mut bob, &datagram), Err(OpenError::Replayed));
    }
    assert_eq!(bob.drops().replayed, 3);
}

#[test]
fn reordered_within_the_window_accepted_once() {
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    let sent: Vec<Datagram> = (0..REPLAY_WINDOW)
        .map(|i| seal(&mut alice, BOB, &i.to_be_bytes()))
        .collect();
    // Newest first, then all the others in reverse: every one is within the window.
    for (i, datagram) in sent.iter().enumerate().rev() {
        let (header, payload) = open_copy(&mut bob, datagram).expect("within window");
        assert_eq!(header.counter, i as u64);
        assert_eq!(payload, (i as u64).to_be_bytes());
    }
    for datagram in &sent {
        assert_eq!(open_copy(&mut bob, datagram), Err(OpenError::Replayed));
    }
    // Interleaved reordering too.
    let more: Vec<Datagram> = (0..10).map(|_| seal(&mut alice, BOB, b"m")).collect();
    for i in [1, 0, 3, 2, 9, 4, 8, 5, 7, 6] {
        open_copy(&mut bob, &more[i]).expect("reordered");
    }
    assert_eq!(bob.drops().total(), REPLAY_WINDOW);
}

#[test]
fn too_old_outside_the_window_is_rejected() {
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    let sent: Vec<Datagram> = (0..=REPLAY_WINDOW + 5)
        .map(|_| seal(&mut alice, BOB, b"d"))
        .collect();
    let newest = sent.last().expect("some");
    open_copy(&mut bob, newest).expect("newest");
    // counter 69 accepted: 6..=68 are within the window, 0..=5 are too old.
    for (i, datagram) in sent.iter().enumerate() {
        let got = open_copy(&mut bob, datagram);
        if (i as u64) < 6 {
            assert_eq!(got, Err(OpenError::TooOld), "{i}");
        } else if i == sent.len() - 1 {
            assert_eq!(got, Err(OpenError::Replayed));
        } else {
            assert!(got.is_ok(), "{i}");
        }
    }
    assert_eq!(bob.drops().too_old, 6);
}

#[test]
fn truncated_at_every_length_is_rejected() {
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    let datagram = seal(&mut alice, BOB, b"cut me anywhere");
    for len in 0..datagram.len() {
        let expected = if len < OVERHEAD {
            OpenError::Truncated
        } else {
            OpenError::Forged
        };
        assert_eq!(
            open_copy(&mut bob, &datagram[..len]),
            Err(expected),
            "length {len}"
        );
    }
    assert_eq!(bob.drops().truncated, OVERHEAD as u64);
    // Even a genuine empty-payload datagram cut by one byte.
    let empty = seal(&mut alice, BOB, b"");
    assert_eq!(empty.len(), OVERHEAD);
    assert_eq!(
        open_copy(&mut bob, &empty[..OVERHEAD - 1]),
        Err(OpenError::Truncated)
    );
    open_copy(&mut bob, &empty).expect("genuine empty payload");
}

#[test]
fn oversized_is_rejected() {
    let mut bob = bob();
    let mut alice = sealer(ALICE);
    let datagram = seal(&mut alice, BOB, &[7; DEFAULT_MTU - OVERHEAD]);
    assert_eq!(datagram.len(), DEFAULT_MTU);
    let mut longer = datagram.to_vec();
    longer.push(0);
    assert_eq!(open_copy(&mut bob, &longer), Err(OpenError::Oversized));
    assert_eq!(open_copy(&mut bob, &[0; 65_535]), Err(OpenError::Oversized));
    assert_eq!(bob.drops().oversized, 2);
    open_copy(&mut bob, &datagram).expect("exactly the MTU is fine");

    // A smaller MTU on the receiver rejects what the sender thought fit.
    let mut tight: Opener<1, 100> = Opener::new(&key(), CLUSTER, BOB);
    tight.add_peer(ALICE).expect("room");
    let big = seal(&mut alice, BOB, &[0; 52]);
    assert_eq!(tight.open(&mut big.to_vec()), Err(OpenError::Oversized));
    let fits = seal(&mut alice, BOB, &[0; 51]);
    assert!(tight.open(&mut fits.to_vec()).is_ok());
}

#[test]
fn wrong_cluster_is_rejected() {
    let mut other = Sealer::new(&key(), CLUSTER + 1, ALICE, ready_counter());
    let mut bob = bob();
    let datagram = seal(&mut other, BOB, b"other cluster");
    assert_eq!(open_copy(&mut bob, &datagram), Err(OpenError::WrongCluster));
    assert_eq!(bob.drops().wrong_cluster, 1);
}

#[test]
fn wrong_version_is_rejected() {
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    let datagram = seal(&mut alice, BOB, b"v1");
    for version in [0, PROTOCOL_VERSION + 1, 0xFF] {
        let mut other = datagram.clone();
        other[0] = version;
        assert_eq!(open_copy(&mut bob, &other), Err(OpenError::WrongVersion));
    }
    assert_eq!(bob.drops().wrong_version, 3);
}

#[test]
fn wrong_receiver_is_rejected() {
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    let for_carol = seal(&mut alice, CAROL, b"not for bob");
    assert_eq!(open_copy(&mut bob, &for_carol), Err(OpenError::NotForUs));
    assert_eq!(bob.drops().not_for_us, 1);
    // Carol opens it, and a reflection back to Alice is refused.
    let mut carol: Opener<4> = Opener::new(&key(), CLUSTER, CAROL);
    carol.add_peer(ALICE).expect("room");
    open_copy(&mut carol, &for_carol).expect("for carol");
    let mut alice_rx: Opener<4> = Opener::new(&key(), CLUSTER, ALICE);
    alice_rx.add_peer(ALICE).expect("room");
    assert_eq!(
        open_copy(&mut alice_rx, &for_carol),
        Err(OpenError::NotForUs)
    );
}

#[test]
fn unknown_and_removed_senders_are_rejected() {
    let mut dave = sealer(4);
    let mut alice = sealer(ALICE);
    let mut bob = bob();
    assert_eq!(
        open_copy(&mut bob, &seal(&mut dave, BOB, b"?")),
        Err(OpenError::UnknownSender)
    );
    assert!(bob.remove_peer(ALICE));
    assert!(!bob.remove_peer(ALICE));
    assert_eq!(
        open_copy(&mut bob, &seal(&mut alice, BOB, b"gone")),
        Err(OpenError::UnknownSender)
    );
    assert_eq!(bob.drops().unknown_sender, 2);
}

#[test]
fn peer_table_has_a_fixed_capacity() {
    let mut small: Opener<2> = Opener::new(&key(), CLUSTER, BOB);
    small.add_peer(1).expect("room");
    small.add_peer(3).expect("room");
    small.add_peer(3).expect("already there");
    assert_eq!(small.add_peer(4), Err(coracle_udp::PeerTableFull));
    assert_eq!(small.peers().collect::<Vec<_>>(), [1, 3]);
}

#[test]
fn random_garbage_is_rejected_without_panic() {
    let mut rng = Rng(0xDEC0_DE00_C0AC_1E00);
    let mut bob = bob();
    let mut buf = vec![0u8; DEFAULT_MTU + 64];
    let mut rejected = 0u64;
    for round in 0..20_000 {
        let len = (rng.next_u64() % buf.len() as u64) as usize;
        let bytes = &mut buf[..len];
        rng.fill(bytes);
        // Make half of them pass the clear checks so the tag check is hit too.
        if round % 2 == 0 && len >= HEADER_LEN {
            let header = Header {
                version: PROTOCOL_VERSION,
                cluster: CLUSTER,
                sender: if round % 4 == 0 { ALICE } else { CAROL },
                receiver: BOB,
                counter: rng.next_u64(),
            };
            header.write_to(bytes.first_chunk_mut().expect("long enough"));
        }
        let got = bob.open(bytes);
        let expected_reason = if len > DEFAULT_MTU {
            Some(OpenError::Oversized)
        } else if len < OVERHEAD {
            Some(OpenError::Truncated)
        } else {
            None
        };
        match (got, expected_reason) {
            (Ok(_), _) => panic!("garbage of {len} bytes opened"),
            (Err(e), Some(reason)) => assert_eq!(e, reason, "length {len}"),
            (Err(_), None) => {}
        }
        rejected += 1;
    }
    assert_eq!(bob.drops().total(), rejected);
    assert!(bob.drops().forged > 1000, "{:?}", bob.drops());
    assert_eq!(bob.window(ALICE).and_then(|w| w.highest()), None);
}

#[test]
fn drop_counters_can_be_taken() {
    let mut bob = bob();
    assert_eq!(bob.open(&mut []), Err(OpenError::Truncated));
    let drops = bob.take_drops();
    assert_eq!(drops.truncated, 1);
    assert_eq!(bob.drops().total(), 0);
    let listed: Vec<(OpenError, u64)> = drops.iter().filter(|&(_, n)| n > 0).collect();
    assert_eq!(listed, [(OpenError::Truncated, 1)]);
}

#[test]
fn errors_display() {
    for reason in OpenError::ALL {
        assert!(!reason.to_string().is_empty());
    }
    let e = SealError::PayloadTooLarge {
        len: 2000,
        max: 1151,
    };
    assert_eq!(
        e.to_string(),
        "payload of 2000 bytes exceeds the 1151 the MTU allows"
    );
}
