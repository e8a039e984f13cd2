//! Replication throughput of the core: a 3-node cluster in one thread, the no-allocation
//! `ArrayLog` storage (compacted as it goes, so it runs forever), 16-byte commands, messages
//! handed from one node to another in-process without a copy, storage "durable" at once.
//!
//! - `cluster/commit_one`: one proposal outstanding at a time; commits/s.
//! - `cluster/commit_batch_64`: 64 proposals, then drive until they commit; entries/s.
//! - `follower/append_64`: one follower takes an AppendEntries of 64 entries (which also
//!   commits the previous 64) and drains its outputs: a sync, 64 applies, one answer.
//! - Before the timed runs, a check counts heap allocations per committed entry in the
//!   steady state (a counting global allocator) and asserts there are none.
//!
//! Run with `cargo bench -p coracle`.

use coracle::{
    AppendEntries, ArrayLog, Config, Entries, Entry, EntryKind, InstallSnapshot, MemStore, Message,
    Node, Output, ReadMode, Role, SnapshotMeta, VecLog,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Entries each node's log holds.
const CAP: usize = 1024;
/// Bytes of one command (and of one log slot).
const DATA: usize = 16;
/// Applied entries each node keeps when it compacts.
const MARGIN: u64 = 256;
/// Entries per proposal batch and per AppendEntries.
const BATCH: usize = 64;
const COMMAND: [u8; DATA] = *b"set key=01234567";

type Log = ArrayLog<CAP, DATA>;
type RaftNode = Node<Log>;

// ----- allocation counting ----------------------------------------------------------------

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting every allocation it makes.
struct CountingAllocator;

// SAFETY: every call goes unchanged to `System`, which upholds the `GlobalAlloc` contract;
// counting does not touch the memory handed out.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

// ----- the in-process cluster -------------------------------------------------------------

/// Three nodes with ids 1, 2, 3 at positions 0, 1, 2; node 1 leads.
struct Cluster {
    nodes: [RaftNode; 3],
    /// Reads released on the leader so far.
    reads_ready: u64,
}

impl Cluster {
    fn new() -> Box<Self> {
        let members = [1, 2, 3];
        let nodes = members.map(|id| {
            let mut config = Config::new(id, id);
            config.max_entries_per_message = BATCH;
            config.keep_entries_behind_snapshot = MARGIN;
            Node::new(config, Log::new(), &members).expect("valid configuration")
        });
        let mut cluster = Box::new(Cluster {
            nodes,
            reads_ready: 0,
        });
        cluster.nodes[0].campaign();
        while cluster.pump() {}
        assert_eq!(cluster.nodes[0].role(), Role::Leader, "node 1 won");
        cluster
    }

    /// Drains every node once, in order, stepping each message into its receiver at once
    /// (it borrows its entries from the sender's log: no copy, no queue). True if any node
    /// had output.
    fn pump(&mut self) -> bool {
        let mut busy = false;
        for i in 0..self.nodes.len() {
            let (before, rest) = self.nodes.split_at_mut(i);
            let (node, after) = rest.split_first_mut().expect("i is in range");
            let from = node.id();
            while let Some(output) = node.poll_output() {
                busy = true;
                match output {
                    Output::Persist(batch) => {
                        let token = batch.token;
                        node.persisted(token)
                    }
                    Output::Send { to, message } => {
                        let k = (to - 1) as usize;
                        let receiver = if k < i {
                            &mut before[k]
                        } else {
                            &mut after[k - i - 1]
                        };
                        receiver.step(from, message);
                    }
                    Output::Apply(entry) => {
                        black_box(entry.data);
                    }
                    Output::ReadReady { id, .. } => {
                        black_box(id);
                        self.reads_ready += 1;
                    }
                    _ => {}
                }
            }
        }
        busy
    }

    /// Issues `count` ReadIndex reads on the leader and drives the cluster until all are
    /// released (they share one heartbeat round).
    fn read(&mut self, count: u64) {
        let target = self.reads_ready + count;
        for id in 0..count {
            self.nodes[0]
                .read(id, ReadMode::ReadIndex)
                .expect("the leader takes it");
        }
        while self.reads_ready < target {
            self.pump();
        }
    }

    /// Proposes `count` commands on the leader and drives the cluster until the leader has
    /// applied them all.
    fn commit(&mut self, count: usize) {
        let mut last = 0;
        for _ in 0..count {
            last = self.nodes[0]
                .propose(&COMMAND)
                .expect("leader takes it")
                .index;
        }
        while self.nodes[0].applied_index() < last {
            self.pump();
        }
        // Snapshot (the state machine is nothing here) and compact now and then, as a host
        // would; the log keeps MARGIN entries behind.
        if last % 128 < count as u64 {
            for node in self.nodes.iter_mut() {
                let _ = node.snapshot_taken(node.applied_index());
            }
        }
    }
}

// ----- benchmarks -------------------------------------------------------------------------

/// ReadIndex reads per second on the leader of the 3-node cluster: batches of 16 reads
/// (the node's pending-read capacity) share one heartbeat round.
fn read_index(c: &mut Criterion) {
    let mut group = c.benchmark_group("reads");
    let mut cluster = Cluster::new();
    cluster.commit(1); // the leader's term has a committed entry
    for batch in [1u64, 16] {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("read_index_batch_{batch}"), |b| {
            b.iter(|| cluster.read(batch))
        });
    }
    group.finish();
}

/// Snapshot install throughput through the core: a leader sends a 1 MiB snapshot in
/// 64 KiB chunks to a follower behind its compaction point (both stores are `MemStore`s in
/// memory, so this is the chunking overhead of the core plus memory copies).
fn snapshot_install(c: &mut Criterion) {
    const SIZE: usize = 1 << 20;
    let mut group = c.benchmark_group("snapshot");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function("install_1MiB", |b| {
        b.iter_batched(
            || {
                let mut store = MemStore::new();
                store.snapshot =
                    Some((SnapshotMeta::new(1, 1, &[]).expect("meta"), vec![7u8; SIZE]));
                store.compacted = (1, 1);
                let mut leader_log = VecLog::new();
                store.recover(&mut leader_log).expect("recover");
                let mut config = Config::new(1, 1);
                config.applied = 1;
                let leader: Node<VecLog> = Node::new(config, leader_log, &[1, 2]).expect("leader");
                let follower: Node<VecLog> =
                    Node::new(Config::new(2, 2), VecLog::new(), &[1, 2]).expect("follower");
                ([leader, follower], [store, MemStore::new()])
            },
            |(mut nodes, mut stores)| {
                nodes[0].campaign();
                let mut restored = false;
                while !restored {
                    let mut busy = false;
                    for (i, store) in stores.iter_mut().enumerate() {
                        let (a, b) = nodes.split_at_mut(1);
                        let (node, other) = if i == 0 {
                            (&mut a[0], &mut b[0])
                        } else {
                            (&mut b[0], &mut a[0])
                        };
                        let from = node.id();
                        while let Some(output) = node.poll_output() {
                            busy = true;
                            match output {
                                Output::Persist(batch) => {
                                    store.persist(&batch.batch());
                                    let token = batch.token;
                                    node.persisted(token)
                                }
                                Output::Send { message, .. } => other.step(from, message),
                                Output::SendSnapshot {
                                    message, max_len, ..
                                } => {
                                    let index = message.last_included_index;
                                    if let Some((data, done)) =
                                        store.snapshot_chunk(index, message.offset, max_len)
                                    {
                                        let chunk = InstallSnapshot {
                                            data,
                                            done,
                                            ..message
                                        };
                                        other.step(from, Message::InstallSnapshot(chunk));
                                    }
                                }
                                Output::RestoreSnapshot { .. } => restored = true,
                                _ => {}
                            }
                        }
                    }
                    if !busy {
                        nodes[0].tick();
                        nodes[1].tick();
                    }
                }
                nodes
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// (c) Heap allocations per committed entry in the steady state: none.
fn allocation_check(_: &mut Criterion) {
    const COMMITS: u64 = 100_000;
    for (name, batch) in [("one at a time", 1), ("batches of 64", BATCH)] {
        let mut cluster = Cluster::new();
        for _ in 0..(2 * CAP) {
            cluster.commit(batch); // warm-up: the logs wrap around and compact
        }
        let before = allocations();
        let first = cluster.nodes[0].applied_index();
        for _ in 0..COMMITS / batch as u64 {
            cluster.commit(batch);
        }
        let allocs = allocations() - before;
        let committed = cluster.nodes[0].applied_index() - first;
        println!(
            "allocations, {name}: {allocs} in {committed} committed entries \
             ({} per entry)",
            allocs as f64 / committed as f64
        );
        assert_eq!(allocs, 0, "the steady state must not allocate");
    }
}

/// (a) and (b): commits through the whole cluster.
fn cluster_commits(c: &mut Criterion) {
    let mut group = c.benchmark_group("cluster");
    for (name, batch) in [("commit_one", 1), ("commit_batch_64", BATCH)] {
        let mut cluster = Cluster::new();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(name, |b| b.iter(|| cluster.commit(batch)));
    }
    group.finish();
}

/// Drains a lone follower's outputs: syncs at once, drops its answers.
fn drain(node: &mut RaftNode) {
    while let Some(output) = node.poll_output() {
        match output {
            Output::Persist(batch) => {
                let token = batch.token;
                node.persisted(token)
            }
            other => {
                black_box(other);
            }
        }
    }
}

/// (d) One AppendEntries of 64 entries at a follower, outputs drained.
fn follower_append(c: &mut Criterion) {
    let members = [1, 2, 3];
    let mut config = Config::new(2, 2);
    config.keep_entries_behind_snapshot = MARGIN;
    let mut follower: Box<RaftNode> =
        Box::new(Node::new(config, Log::new(), &members).expect("valid"));
    let heartbeat = AppendEntries {
        term: 1,
        prev_log_index: 0,
        prev_log_term: 0,
        leader_commit: 0,
        round: 0,
        entries: Entries::EMPTY,
    };
    follower.step(1, Message::AppendEntries(heartbeat));
    drain(&mut follower);
    assert_eq!(follower.leader(), Some(1));

    let entry = Entry {
        index: 0,
        term: 1,
        kind: EntryKind::Command,
        data: &COMMAND,
    };
    let mut entries = [entry; BATCH];
    let mut prev = 0;
    let mut group = c.benchmark_group("follower");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("append_64", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                // The leader's next message: 64 new entries, committing the previous 64.
                for (k, e) in entries.iter_mut().enumerate() {
                    e.index = prev + 1 + k as u64;
                }
                let message = AppendEntries {
                    prev_log_index: prev,
                    prev_log_term: (prev > 0) as u64,
                    leader_commit: prev,
                    entries: Entries::from_slice(&entries),
                    ..heartbeat
                };
                follower.step(1, Message::AppendEntries(message));
                drain(&mut follower);
                prev += BATCH as u64;
                let _ = follower.snapshot_taken(follower.applied_index());
            }
            start.elapsed()
        })
    });
    group.finish();
    assert_eq!(follower.last_index(), prev, "every message was taken");
    assert_eq!(follower.counters().invalid, 0);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = allocation_check, cluster_commits, follower_append, read_index, snapshot_install
}
criterion_main!(benches);
