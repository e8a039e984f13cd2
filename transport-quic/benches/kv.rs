//! Costs of the reference state machine ([`Kv`]) as the end-to-end benchmark loads it: a
//! store of 100 000 keys `bench/{:012}` with 256-byte values, 64 client sessions each
//! writing one value at a time to a random existing key (so each put overwrites), the
//! way `coracle bench` and [`coracle_quic::client::Client`] issue them: each session's
//! sequence numbers increase by one, and `ack_below` is the request's own sequence number
//! (the client has one write outstanding, so every earlier one was answered).
//!
//! - `kv/apply_put`: one [`Kv::apply`] of an encoded put that does not ask for the
//!   previous value (what `Client::put` sends); ns per apply.
//! - `kv/apply_put_previous`: the same with the previous value asked for
//!   (`Client::put_returning_previous`).
//! - `kv/snapshot`: [`Kv::snapshot`] of that store (about 27 MB).
//!
//! The commands are encoded before the timed loops (encoding is the client's cost, not
//! the state machine's). Run with `cargo bench -p coracle-quic --bench kv`.

use coracle_quic::kv::Kv;
use coracle_quic::protocol::{Command, WriteOp};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Keys in the store.
const KEYS: u64 = 100_000;
/// Bytes of a value.
const VALUE: usize = 256;
/// Client sessions writing.
const SESSIONS: u64 = 64;
/// Commands encoded ahead of each timed stretch.
const CHUNK: u64 = 8192;

fn key(k: u64) -> Vec<u8> {
    format!("bench/{k:012}").into_bytes()
}

/// A store being written to by [`SESSIONS`] clients.
struct Load {
    kv: Kv,
    index: u64,
    seqs: Vec<u64>,
    rng: u64,
    value: Vec<u8>,
    previous: bool,
}

impl Load {
    /// The pre-filled store (by one setup session, then acknowledged).
    fn new(previous: bool) -> Load {
        let value: Vec<u8> = (0..VALUE).map(|i| b'a' + (i % 26) as u8).collect();
        let mut load = Load {
            kv: Kv::new(),
            index: 0,
            seqs: vec![0; SESSIONS as usize],
            rng: 0x9e37_79b9_7f4a_7c15,
            value,
            previous,
        };
        for k in 0..KEYS {
            load.index += 1;
            let seq = k + 1;
            let bytes = encode(u64::MAX, seq, seq, put(key(k), load.value.clone(), false));
            load.kv.apply(load.index, &bytes);
        }
        // Warm the sessions up so the timed part has all 64 in the table.
        let warm = load.commands(SESSIONS * 4);
        for c in &warm {
            load.index += 1;
            load.kv.apply(load.index, c);
        }
        assert_eq!(load.kv.len(), KEYS as usize);
        load
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next `n` writes of the sessions, round robin (as 64 clients with one request
    /// outstanding each would interleave), each to a random existing key.
    fn commands(&mut self, n: u64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let s = (i % SESSIONS) as usize;
                self.seqs[s] += 1;
                let seq = self.seqs[s];
                let k = self.next() % KEYS;
                let op = put(key(k), self.value.clone(), self.previous);
                encode(s as u64 + 1, seq, seq, op)
            })
            .collect()
    }

    /// Applies `iters` writes; the time spent in [`Kv::apply`] only.
    fn run(&mut self, iters: u64) -> Duration {
        let mut spent = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHUNK);
            let commands = self.commands(n);
            let t = Instant::now();
            for c in &commands {
                self.index += 1;
                black_box(self.kv.apply(self.index, c));
            }
            spent += t.elapsed();
            left -= n;
        }
        spent
    }
}

fn put(key: Vec<u8>, value: Vec<u8>, previous: bool) -> WriteOp {
    WriteOp::Put {
        key,
        value,
        return_previous: previous,
    }
}

fn encode(client: u64, seq: u64, ack_below: u64, op: WriteOp) -> Vec<u8> {
    postcard::to_allocvec(&Command::Write {
        client,
        seq,
        ack_below,
        op,
    })
    .expect("a command encodes")
}

fn kv(c: &mut Criterion) {
    let mut g = c.benchmark_group("kv");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    for (name, previous) in [("apply_put", false), ("apply_put_previous", true)] {
        let mut load = Load::new(previous);
        g.bench_function(name, |b| b.iter_custom(|iters| load.run(iters)));
    }
    let load = Load::new(false);
    g.throughput(Throughput::Bytes(
        load.kv.snapshot().expect("a snapshot").len() as u64,
    ));
    g.bench_function("snapshot", |b| {
        b.iter(|| black_box(load.kv.snapshot().expect("a snapshot")))
    });
    // The same, written out in steps as a node does it (no writes in between).
    let mut kv = load.kv.clone();
    g.bench_function("snapshot_in_steps", |b| {
        b.iter(|| {
            kv.begin_snapshot().expect("a snapshot");
            // As a node does: each step's bytes go out (to the snapshot's file) before the
            // next step.
            let mut step = Vec::new();
            loop {
                let done = kv.continue_snapshot(
                    coracle_quic::kv::SNAPSHOT_PAIRS_PER_STEP,
                    coracle_quic::kv::SNAPSHOT_BYTES_PER_STEP,
                    &mut step,
                );
                black_box(&step);
                step.clear();
                if let Some(done) = done {
                    break done.expect("a snapshot");
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, kv);
criterion_main!(benches);
