//! Sealing and opening never touch the heap, nor do encoding and decoding:
//! a counting global allocator watches this thread while datagrams are
//! encoded and sealed, opened and decoded, and rejected.
// A global allocator is an `unsafe impl`: test-only, forwarding to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use coracle::{AppendEntries, Entries, Entry, EntryKind, Message};
use coracle_udp::codec::{self, Link, DEFAULT_ENTRIES};
use coracle_udp::{ClusterKey, Datagram, Opener, Sealer, SendCounter, DEFAULT_MTU};

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting the allocations of a watched thread.
struct Counting;

// SAFETY: forwards to the system allocator unchanged; the thread-locals are
// const-initialized `Cell`s without destructors, so touching them never
// allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn seal_and_open_do_not_allocate() {
    let key = ClusterKey::from_bytes([9; 32]);
    let mut counter = SendCounter::resume(None, 1 << 20);
    counter.persisted(0);
    let mut alice = Sealer::new(&key, 5, 1, counter);
    let mut bob: Opener<4> = Opener::new(&key, 5, 2);
    bob.add_peer(1).expect("room");
    let payload = [0xABu8; 1000];
    let mut datagram: Datagram = Datagram::new();
    let mut garbage = [0x5Cu8; 300];

    WATCHING.with(|w| w.set(true));
    let mut opened = 0usize;
    for i in 0..1000 {
        alice
            .seal(2, &payload[..i % 1000], &mut datagram)
            .expect("fits");
        let mut replay = datagram.clone();
        opened += bob.open(&mut datagram).expect("authentic").payload.len();
        assert!(bob.open(&mut replay).is_err());
        assert!(bob.open(&mut garbage).is_err());
    }
    WATCHING.with(|w| w.set(false));

    assert_eq!(ALLOCATIONS.with(Cell::get), 0);
    assert_eq!(opened, (0..1000).sum::<usize>());
}

#[test]
fn encode_seal_and_open_decode_do_not_allocate() {
    let key = ClusterKey::from_bytes([9; 32]);
    let ready = || {
        let mut counter = SendCounter::resume(None, 1 << 20);
        counter.persisted(0);
        counter
    };
    let mut alice: Link<4> = Link::new(&key, 5, 1, ready());
    let mut bob: Link<4> = Link::new(&key, 5, 2, ready());
    bob.add_peer(1).expect("room");
    let data = [0x3Cu8; codec::max_entry_bytes(DEFAULT_MTU)];
    let entries: Vec<Entry<'_>> = (0..DEFAULT_ENTRIES as u64)
        .map(|i| Entry {
            index: 100 + i,
            term: 7,
            kind: EntryKind::Command,
            data: &data[..(i as usize * 7) % 20],
        })
        .collect();
    let full = [Entry {
        index: 100,
        term: 7,
        kind: EntryKind::Command,
        data: &data,
    }];
    let append = |entries| {
        Message::AppendEntries(AppendEntries {
            term: 7,
            prev_log_index: 99,
            prev_log_term: 7,
            leader_commit: 99,
            round: 3,
            entries: Entries::from_slice(entries),
        })
    };
    let mut datagram: Datagram = Datagram::new();
    let mut garbage = [0x01u8; 300];

    WATCHING.with(|w| w.set(true));
    let mut decoded = 0usize;
    for i in 0..500 {
        let message = if i % 2 == 0 {
            append(&full[..])
        } else {
            append(&entries[..])
        };
        alice.encode_seal(2, &message, &mut datagram).expect("fits");
        let mut replay = datagram.clone();
        let received = bob
            .open_decode::<DEFAULT_ENTRIES>(&mut datagram)
            .expect("authentic");
        if let Message::AppendEntries(a) = received.message() {
            decoded += a.entries.len();
        }
        assert!(bob.open_decode::<DEFAULT_ENTRIES>(&mut replay).is_err());
        assert!(bob.open_decode::<DEFAULT_ENTRIES>(&mut garbage).is_err());
    }
    WATCHING.with(|w| w.set(false));

    assert_eq!(ALLOCATIONS.with(Cell::get), 0);
    assert_eq!(decoded, 250 * (1 + DEFAULT_ENTRIES));
}
