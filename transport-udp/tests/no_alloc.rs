//! Sealing and opening never touch the heap: a counting global allocator
//! watches this thread while datagrams are sealed, opened and rejected.
// A global allocator is an `unsafe impl`: test-only, forwarding to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use coracle_udp::{ClusterKey, Datagram, Opener, Sealer, SendCounter};

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
