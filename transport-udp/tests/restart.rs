//! A sender that reboots, from the high-water mark it persisted, never
//! reuses a counter (and so never a nonce), whenever it crashes.

use std::collections::HashSet;

use coracle_udp::{ClusterKey, CounterError, Datagram, Opener, SealError, Sealer, SendCounter};

const CLUSTER: u64 = 77;
const ALICE: u64 = 1;
const BOB: u64 = 2;

fn key() -> ClusterKey {
    ClusterKey::from_bytes([3; 32])
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A host with synchronous writes: persist as soon as a mark is due.
#[test]
fn synchronous_store_never_reuses_and_skips_at_most_the_stride() {
    const K: u64 = 16;
    let mut rng = Rng(1);
    let mut store: Option<u64> = None;
    let mut used = HashSet::new();
    let mut last: Option<u64> = None;
    let mut bob: Opener<1> = Opener::new(&key(), CLUSTER, BOB);
    bob.add_peer(ALICE).expect("room");

    for _boot in 0..200 {
        let mut alice = Sealer::new(&key(), CLUSTER, ALICE, SendCounter::resume(store, K));
        let mut first_of_boot = true;
        // Crash after a random number of datagrams, 0 included.
        for _ in 0..rng.below(3 * K) {
            if let Some(mark) = alice.counter().persist_due() {
                store = Some(mark);
                alice.counter_mut().persisted(mark);
            }
            let mut out: Datagram = Datagram::new();
            let header = alice
                .seal(BOB, b"entry", &mut out)
                .expect("persisted in time");
            assert!(
                used.insert(header.counter),
                "counter {} reused",
                header.counter
            );
            if let Some(previous) = last {
                assert!(header.counter > previous);
                if first_of_boot {
                    assert!(header.counter - previous <= K + 1, "skipped more than K");
                }
            }
            first_of_boot = false;
            last = Some(header.counter);
            // Bob, who never restarted, accepts every one: never a replay.
            let opened = bob.open(&mut out).expect("fresh counter");
            assert_eq!(opened.payload, b"entry");
        }
    }
    assert_eq!(bob.drops().total(), 0);
    assert!(used.len() > 1000);
}

/// A host whose writes take a while and may be lost or land at the crash.
#[test]
fn asynchronous_store_with_crashes_anywhere_never_reuses() {
    const K: u64 = 8;
    let mut rng = Rng(2);
    let mut store: Option<u64> = None;
    let mut used = HashSet::new();
    let mut highest: Option<u64> = None;
    let mut stalls = 0u64;
    let mut bob: Opener<1> = Opener::new(&key(), CLUSTER, BOB);
    bob.add_peer(ALICE).expect("room");

    for _boot in 0..500 {
        let mut alice = Sealer::new(&key(), CLUSTER, ALICE, SendCounter::resume(store, K));
        let mut in_flight: Option<u64> = None;
        for _ in 0..rng.below(4 * K) {
            if in_flight.is_none() {
                in_flight = alice.counter().persist_due();
            }
            // The write becomes durable some steps later.
            if rng.below(3) == 0 {
                if let Some(mark) = in_flight.take() {
                    store = Some(mark);
                    alice.counter_mut().persisted(mark);
                }
            }
            let mut out: Datagram = Datagram::new();
            match alice.seal(BOB, b"x", &mut out) {
                Ok(header) => {
                    assert!(
                        used.insert(header.counter),
                        "counter {} reused",
                        header.counter
                    );
                    assert!(highest.is_none_or(|h| header.counter > h));
                    highest = Some(header.counter);
                    bob.open(&mut out).expect("fresh counter");
                }
                Err(SealError::Counter(CounterError::AwaitingPersist)) => stalls += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        // Crash: a write in flight is lost, or lands without being reported.
        if let Some(mark) = in_flight {
            if rng.below(2) == 0 {
                store = Some(mark);
            }
        }
    }
    assert!(used.len() > 1000);
    assert!(stalls > 0, "the test should exercise back-pressure");
    assert_eq!(bob.drops().total(), 0);
}

/// What happens without the jump: resuming at the mark itself would reuse.
#[test]
fn resuming_at_the_mark_would_reuse_a_counter() {
    const K: u64 = 10;
    let mut c = SendCounter::resume(None, K);
    let mark = c.persist_due().expect("due");
    c.persisted(mark);
    let used: Vec<u64> = (0..5)
        .map(|_| c.next_counter().expect("headroom"))
        .collect();
    // The store still says 0, yet counters 0..5 are spent: a reboot must
    // not start at 0, and `resume` starts at 0 + K.
    assert_eq!(used, [0, 1, 2, 3, 4]);
    assert_eq!(SendCounter::resume(Some(mark), K).peek(), K);
}
