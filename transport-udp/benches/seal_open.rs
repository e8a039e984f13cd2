//! Throughput of the security layer on one core: sealing, opening, and
//! rejecting a forged datagram (which costs a full Poly1305 pass).
//!
//! - `seal/N`: seal an N-byte payload into a 1200-byte datagram buffer.
//! - `open/N`: open a sealed datagram with an N-byte payload (the replay
//!   window is reset between iterations by sealing a fresh copy outside the
//!   timed part).
//! - `reject_forged/N`: a datagram whose last tag byte is flipped.
//!
//! Run with `cargo bench -p coracle-udp`.

use std::hint::black_box;

use coracle_udp::{ClusterKey, Datagram, OpenError, Opener, Sealer, SendCounter};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const SIZES: [usize; 3] = [64, 512, 1151];

fn sealer(key: &ClusterKey) -> Sealer {
    let mut counter = SendCounter::resume(None, u64::MAX / 2);
    counter.persisted(0);
    Sealer::new(key, 7, 1, counter)
}

fn opener(key: &ClusterKey) -> Opener<8> {
    let mut opener = Opener::new(key, 7, 2);
    opener.add_peer(1).expect("room");
    opener
}

fn bench(c: &mut Criterion) {
    let key = ClusterKey::from_bytes([0x11; 32]);

    let mut group = c.benchmark_group("seal");
    for size in SIZES {
        let payload = vec![0xA5u8; size];
        let mut alice = sealer(&key);
        let mut out: Datagram = Datagram::new();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(size.to_string(), |b| {
            b.iter(|| {
                alice.seal(2, black_box(&payload), &mut out).expect("fits");
                black_box(&out);
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("open");
    for size in SIZES {
        let payload = vec![0xA5u8; size];
        let mut alice = sealer(&key);
        let mut bob = opener(&key);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(size.to_string(), |b| {
            b.iter_batched_ref(
                || {
                    let mut out: Datagram = Datagram::new();
                    alice.seal(2, &payload, &mut out).expect("fits");
                    out
                },
                |datagram| {
                    let opened = bob.open(datagram).expect("authentic");
                    black_box(opened.payload.len());
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();

    let mut group = c.benchmark_group("reject_forged");
    for size in SIZES {
        let payload = vec![0xA5u8; size];
        let mut alice = sealer(&key);
        let mut bob = opener(&key);
        let mut forged: Datagram = Datagram::new();
        alice.seal(2, &payload, &mut forged).expect("fits");
        if let Some(last) = forged.last_mut() {
            *last ^= 1;
        }
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(size.to_string(), |b| {
            b.iter_batched_ref(
                || forged.clone(),
                |datagram| assert_eq!(bob.open(datagram), Err(OpenError::Forged)),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
