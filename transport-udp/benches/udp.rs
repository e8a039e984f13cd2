//! The datagram path and a loopback cluster.
//!
//! - `datagram/encode_seal`: encode an AppendEntries and seal it into a
//!   datagram of (nearly) 1200 bytes: one entry of the largest command the
//!   MTU allows, with worst-case (10-byte) varints for ids, terms and indexes.
//! - `datagram/open_decode`: open and decode that datagram (a fresh one is
//!   sealed outside the timed part, for the replay window).
//! - `cluster/propose_commit_64_outstanding`: a 3-node smol cluster over
//!   UDP on 127.0.0.1 with in-memory logs; 64 client tasks each propose a
//!   16-byte command and wait for it to commit on the leader, then the
//!   next: throughput in commits per second.
//!
//! Run with `cargo bench -p coracle-udp --bench udp`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use coracle::{AppendEntries, Entries, Entry, EntryKind, Message};
use coracle_udp::codec::{self, Link, DEFAULT_ENTRIES};
use coracle_udp::{ClusterKey, Datagram, SendCounter, DEFAULT_MTU};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const BIG: u64 = u64::MAX - 1;

fn link(key: &ClusterKey, me: u64, peer: u64) -> Link<4> {
    let mut counter = SendCounter::resume(None, u64::MAX / 2);
    counter.persisted(0);
    let mut link = Link::new(key, BIG, me, counter);
    link.add_peer(peer).expect("room");
    link
}

fn datagram_path(c: &mut Criterion) {
    let key = ClusterKey::from_bytes([0x11; 32]);
    let data = vec![0xA5u8; codec::max_entry_bytes(DEFAULT_MTU)];
    let entries = [Entry {
        index: BIG,
        term: BIG,
        kind: EntryKind::Command,
        data: &data,
    }];
    let message = Message::AppendEntries(AppendEntries {
        term: BIG,
        prev_log_index: BIG,
        prev_log_term: BIG,
        leader_commit: BIG,
        round: BIG,
        entries: Entries::from_slice(&entries),
    });
    let mut alice = link(&key, BIG, BIG - 1);
    let mut bob = link(&key, BIG - 1, BIG);
    let mut out: Datagram = Datagram::new();
    alice
        .encode_seal(BIG - 1, &message, &mut out)
        .expect("fits");
    let size = out.len();
    eprintln!("AppendEntries datagram: {size} bytes");

    let mut group = c.benchmark_group("datagram");
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function("encode_seal", |b| {
        b.iter(|| {
            alice
                .encode_seal(BIG - 1, black_box(&message), &mut out)
                .expect("fits");
            black_box(&out);
        });
    });
    group.bench_function("open_decode", |b| {
        b.iter_batched_ref(
            || {
                let mut out: Datagram = Datagram::new();
                alice
                    .encode_seal(BIG - 1, &message, &mut out)
                    .expect("fits");
                out
            },
            |datagram| {
                let received = bob
                    .open_decode::<DEFAULT_ENTRIES>(datagram)
                    .expect("authentic");
                black_box(received.message());
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

const OUTSTANDING: u64 = 64;

fn loopback_cluster(c: &mut Criterion) {
    let cluster = common::Cluster::start_with(3, false, common::Flush::Never);
    let leader = smol::block_on(cluster.wait_leader(None, Duration::from_secs(20)));
    let handle = cluster.handle(leader).expect("running").clone();
    let mut group = c.benchmark_group("cluster");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("propose_commit_64_outstanding", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let workers: Vec<_> = (0..OUTSTANDING)
                .map(|w| {
                    let handle = handle.clone();
                    let share = iters / OUTSTANDING + u64::from(w < iters % OUTSTANDING);
                    smol::spawn(async move {
                        for i in 0..share {
                            let mut command = [0u8; 16];
                            command[..8].copy_from_slice(&w.to_le_bytes());
                            command[8..].copy_from_slice(&i.to_le_bytes());
                            handle.propose(command.to_vec()).await.expect("committed");
                        }
                    })
                })
                .collect();
            smol::block_on(async {
                for worker in workers {
                    worker.await;
                }
            });
            start.elapsed()
        });
    });
    group.finish();
}

criterion_group!(benches, datagram_path, loopback_cluster);
criterion_main!(benches);
