//! The durable-store conformance suite: the contract of the host's durable store (the
//! one that performs [`Batch`]es, [`Output::Persist`](crate::Output::Persist)), checked
//! against [`MemStore`], the reference, over deterministic sequences of batches drawn from
//! a seeded generator. The file log of `coracle-quic`, the flash journal of the boards,
//! the simulator's disk and [`MemStore`] itself run it; run it against a store of yours:
//!
//! ```
//! use coracle::conformance::durable::{self, Crash, DurableStore, Options, Recovered};
//! use coracle::{Batch, Index, MemStore, SnapshotMeta};
//!
//! /// A store that keeps a durable copy and the batches not yet synced (yours writes
//! /// files or flash; here `MemStore` plays the medium).
//! #[derive(Default)]
//! struct MyStore {
//!     durable: MemStore,
//!     written: MemStore,
//! }
//!
//! impl DurableStore for MyStore {
//!     type Error = std::convert::Infallible;
//!     fn perform(&mut self, batch: &Batch<'_>) -> Result<(), Self::Error> {
//!         self.written.persist(batch);
//!         Ok(())
//!     }
//!     fn save_taken(&mut self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), Self::Error> {
//!         self.durable.save_taken(meta.index, bytes.to_vec());
//!         self.written.save_taken(meta.index, bytes.to_vec());
//!         Ok(())
//!     }
//!     fn sync(&mut self) -> Result<(), Self::Error> {
//!         self.durable = self.written.clone();
//!         Ok(())
//!     }
//!     fn crash(&mut self, _: Crash) {
//!         self.written = self.durable.clone(); // what was not synced is lost
//!     }
//!     fn reopen(&mut self) -> Result<Recovered, Self::Error> {
//!         Ok(Recovered::from_store(&self.durable))
//!     }
//! }
//!
//! // In a test of yours (a failure panics, naming the rule, the seed and the step):
//! let report = durable::check(&Options { seeds: 0..4, ..Options::default() }, MyStore::default);
//! assert!(report.crashes_that_lost_writes > 0);
//! ```
//!
//! [`check`] runs [`Options::seeds`], each on a fresh store from `open`, and returns a
//! [`Report`] of what they did; a failure panics with the rule broken, the seed and the
//! step, and the batches of that seed replay exactly with [`check_seed`]. A store that
//! fills a memory log at a restart builds its [`Recovered`] with [`Recovered::from_log`].
//!
//! # What a seed does
//!
//! [`Options::steps`] steps, each one of:
//!
//! - **a batch**, built as the node builds them and often several writes at once: a new
//!   term and vote; a chunk of a snapshot received from a leader (chunks in order from
//!   offset 0, the last one installing it in the same batch: the log after the snapshot
//!   is kept when it holds the snapshot's last entry with its term, compacted through it,
//!   and reset after it otherwise, whether the snapshot lies inside the log or past it);
//!   the host's own snapshot taken at a durable index ([`DurableStore::save_taken`], then
//!   [`SnapshotWrite::Taken`] and `compact_through` at or a little behind it); a conflict
//!   (a truncation above the kept snapshot and entries of a newer term in its place);
//!   entries appended and cut by a truncation in the same batch; appended entries
//!   (commands, no-ops, membership entries, of 0 to [`Options::max_entry_bytes`] bytes).
//!   When the log holds [`Options::max_live_entries`] the host syncs and takes a snapshot,
//!   as a host under a memory or flash budget does.
//! - **a sync** ([`DurableStore::sync`]): every batch performed is durable.
//! - **a clean reopen**: a sync, then [`DurableStore::reopen`]; what it recovered must be
//!   exactly the reference's state.
//! - **a crash**: [`DurableStore::crash`] (what was not synced may be lost), then
//!   [`DurableStore::reopen`]; what it recovered must be the reference's state after
//!   every synced batch and a prefix of the writes performed since (in the contract's
//!   order within a batch: hard state, chunk, kept snapshot, reset, truncation, entries one
//!   by one, compaction). A crash must not reorder writes.
//!
//! A seed ends with a clean reopen.
//!
//! # The rules (the names a failure gives)
//!
//! - `performs valid batches`: the store performs, syncs and reopens without an error
//!   every sequence the node may hand it.
//! - `hard state`: the term and vote last written survive.
//! - `kept snapshot`: the kept snapshot's metadata (index, term, configuration) and its
//!   bytes survive, whether installed from a leader or taken by the host.
//! - `compaction and reset`: the log starts after a point no later than the latest
//!   compaction asked for or the kept snapshot's index, whichever is later (a store may
//!   compact later, or never, and may drop what its kept snapshot covers when it likes,
//!   never more), and no earlier than the latest reset (an installed snapshot the log did
//!   not reach), with the term of the entry there.
//! - `truncation`: no entry a truncation (or a conflicting rewrite) removed comes back.
//! - `entries`: every entry written and not removed survives, with its index, term, kind
//!   and bytes, none missing.
//! - `snapshot being received`: if the store reports the chunks of a snapshot it was
//!   receiving, they are the ones written (a store may forget them at a restart: the node
//!   does, and the leader sends the snapshot again).

use crate::durability::{Batch, SnapshotChunkWrite, SnapshotWrite, SyncToken};
use crate::rng::Rng;
use crate::storage::{LogStorage, MemStore, OwnedEntry, SnapshotMeta};
use crate::types::{Entry, EntryKind, HardState, Index, Term};
use crate::Entries;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::{Range, RangeInclusive};

/// A durable store as the suite drives it: perform batches, make them durable, crash,
/// reopen and say what was recovered.
pub trait DurableStore {
    /// What its operations fail with (a failure breaks the rule `performs valid batches`).
    type Error: fmt::Debug;

    /// Performs `batch` as the host does after [`Output::Persist`](crate::Output::Persist),
    /// in the contract's order. It need not be durable before [`DurableStore::sync`].
    fn perform(&mut self, batch: &Batch<'_>) -> Result<(), Self::Error>;

    /// Keeps the host's own snapshot of its state machine at `meta.index` (the bytes),
    /// durable when this returns, as before
    /// [`Node::snapshot_taken`](crate::Node::snapshot_taken) (`meta` is what it answers).
    /// The next batch holds its [`SnapshotWrite::Taken`].
    fn save_taken(&mut self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), Self::Error>;

    /// Makes every batch performed so far durable (a flush, an fsync, a rewrite that was
    /// owed).
    fn sync(&mut self) -> Result<(), Self::Error>;

    /// A crash: what was not made durable may be lost. `hint` suggests how much survives;
    /// a store that models a disk may follow it, one that cannot lose writes does nothing.
    /// [`DurableStore::reopen`] follows.
    fn crash(&mut self, hint: Crash);

    /// Reopens the store from what it holds (a restart) and reports what it recovered.
    fn reopen(&mut self) -> Result<Recovered, Self::Error>;
}

/// What the suite suggests a crash keeps (the suite accepts any prefix of the writes not
/// synced, whatever the store does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crash {
    /// How many of the batches performed since the last sync reached the disk.
    pub keep: usize,
    /// The last of them torn: only its first `n` entries (and no compaction) reached it.
    pub torn_entries: Option<usize>,
}

/// What a store recovered at a reopen: what a host fills the node's memory log with,
/// and the snapshot it keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The term and vote.
    pub hard_state: HardState,
    /// Index and term of the entry before the first kept (`(0, 0)` if none was dropped).
    pub compacted: (Index, Term),
    /// The entries kept, in order from `compacted.0 + 1`.
    pub entries: Vec<OwnedEntry>,
    /// The kept snapshot's metadata.
    pub snapshot_meta: Option<SnapshotMeta>,
    /// The kept snapshot's bytes.
    pub snapshot_bytes: Option<Vec<u8>>,
    /// A snapshot being received, if the store keeps one across a restart: its metadata
    /// and the bytes so far. `None` if it does not (or there is none).
    pub incoming: Option<(SnapshotMeta, Vec<u8>)>,
}

impl Recovered {
    /// What a memory log filled at a restart holds: hard state, compaction point, entries
    /// and snapshot metadata. An entry whose data the log does not hold in memory is asked
    /// of `read_back` (the host's read from its store); the snapshot's bytes and the
    /// snapshot being received are the caller's to fill.
    pub fn from_log<S: LogStorage>(
        log: &S,
        mut read_back: impl FnMut(Index) -> Option<OwnedEntry>,
    ) -> Self {
        let first = log.first_index();
        let entries = (first..=log.last_index())
            .map_while(|i| log.entry(i).map(OwnedEntry::from).or_else(|| read_back(i)))
            .collect();
        Recovered {
            hard_state: log.hard_state(),
            compacted: (first - 1, log.term(first - 1).unwrap_or(0)),
            entries,
            snapshot_meta: log.snapshot_meta(),
            snapshot_bytes: None,
            incoming: None,
        }
    }

    /// Everything `store` holds.
    pub fn from_store(store: &MemStore) -> Self {
        Recovered {
            hard_state: store.hard_state,
            compacted: store.compacted,
            entries: store.entries.clone(),
            snapshot_meta: store.snapshot.as_ref().map(|(m, _)| *m),
            snapshot_bytes: store.snapshot.as_ref().map(|(_, b)| b.clone()),
            incoming: store.incoming.clone(),
        }
    }
}

/// The reference itself: it performs at once and loses nothing in a crash.
impl DurableStore for MemStore {
    type Error = core::convert::Infallible;

    fn perform(&mut self, batch: &Batch<'_>) -> Result<(), Self::Error> {
        self.persist(batch);
        Ok(())
    }

    fn save_taken(&mut self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), Self::Error> {
        MemStore::save_taken(self, meta.index, bytes.to_vec());
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    fn crash(&mut self, _: Crash) {}

    fn reopen(&mut self) -> Result<Recovered, Self::Error> {
        Ok(Recovered::from_store(self))
    }
}

/// The shape of the sequences: the seeds, how long, and the sizes a store can take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The seeds [`check`] runs.
    pub seeds: Range<u64>,
    /// Steps (batches, syncs, reopens, crashes) per seed.
    pub steps: usize,
    /// Largest entry data.
    pub max_entry_bytes: usize,
    /// Most entries appended by one batch.
    pub max_entries_per_batch: usize,
    /// Most entries the log holds after its compaction point (a fixed-capacity memory
    /// log's room); the host snapshots and compacts when it is reached.
    pub max_live_entries: u64,
    /// Sizes of the snapshots, received and taken.
    pub snapshot_bytes: RangeInclusive<usize>,
    /// Largest chunk of a snapshot being received.
    pub chunk_bytes: usize,
    /// Largest encoded configuration in a snapshot's metadata.
    pub max_config_bytes: usize,
}

impl Options {
    /// Panics, saying why, if the options cannot make a run.
    fn validate(&self) {
        assert!(
            self.max_live_entries > self.max_entries_per_batch as u64 + 3,
            "conformance options: max_live_entries ({}) must exceed max_entries_per_batch ({}) \
             + 3, or the log is always full",
            self.max_live_entries,
            self.max_entries_per_batch
        );
        assert!(
            self.snapshot_bytes.start() <= self.snapshot_bytes.end(),
            "conformance options: snapshot_bytes is empty ({:?})",
            self.snapshot_bytes
        );
        assert!(
            self.chunk_bytes > 0,
            "conformance options: chunk_bytes must be at least 1"
        );
    }
}

impl Default for Options {
    /// 32 seeds of 200 steps; entries up to 64 bytes, 8 per batch, 64 in the log;
    /// snapshots up to 300 bytes in chunks of up to 64; configurations up to 27 bytes.
    fn default() -> Self {
        Options {
            seeds: 0..32,
            steps: 200,
            max_entry_bytes: 64,
            max_entries_per_batch: 8,
            max_live_entries: 64,
            snapshot_bytes: 0..=300,
            chunk_bytes: 64,
            max_config_bytes: 27,
        }
    }
}

/// Runs every seed of `options` on a fresh, empty store from `open`; panics with the rule
/// broken, the seed and the step. Returns what the seeds did (a test may check that its
/// store's crashes did lose writes, say).
pub fn check<S: DurableStore>(options: &Options, mut open: impl FnMut() -> S) -> Report {
    let mut report = Report::default();
    for seed in options.seeds.clone() {
        report.add(&check_seed(options, seed, open()));
    }
    report
}

/// Runs one seed on `store` (empty): what [`check`] does for each, to replay a failure.
pub fn check_seed<S: DurableStore>(options: &Options, seed: u64, store: S) -> Report {
    options.validate();
    let mut run = Run::new(options, seed, store);
    for _ in 0..options.steps {
        run.step += 1;
        run.one_step();
    }
    run.step += 1;
    run.doing(String::from("the last clean reopen"));
    run.clean_reopen();
    run.seen
}

/// What a run did: how many times each kind of step the module documentation lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Batches performed.
    pub batches: u32,
    /// Batches with three or more kinds of writes.
    pub many_writes: u32,
    /// Conflicts: a truncation and entries of a newer term.
    pub conflicts: u32,
    /// Entries appended and cut again in the same batch.
    pub cut_in_the_batch: u32,
    /// Snapshots the host took.
    pub taken: u32,
    /// Of those, taken because the log was full.
    pub taken_for_room: u32,
    /// Chunks of a snapshot being received, after its first.
    pub chunks_after_the_first: u32,
    /// Snapshots installed that the log held: the log after them kept.
    pub installs_keeping_the_log: u32,
    /// Snapshots installed inside the log, at an entry of another term: the log reset.
    pub installs_resetting_the_log: u32,
    /// Snapshots installed past the end of the log: the log reset.
    pub installs_past_the_log: u32,
    /// Syncs.
    pub syncs: u32,
    /// Clean reopens.
    pub clean_reopens: u32,
    /// Crashes.
    pub crashes: u32,
    /// Crashes after which the store had lost writes it had performed (0 for a store that
    /// cannot lose any).
    pub crashes_that_lost_writes: u32,
}

impl Report {
    fn add(&mut self, o: &Report) {
        self.batches += o.batches;
        self.many_writes += o.many_writes;
        self.conflicts += o.conflicts;
        self.cut_in_the_batch += o.cut_in_the_batch;
        self.taken += o.taken;
        self.taken_for_room += o.taken_for_room;
        self.chunks_after_the_first += o.chunks_after_the_first;
        self.installs_keeping_the_log += o.installs_keeping_the_log;
        self.installs_resetting_the_log += o.installs_resetting_the_log;
        self.installs_past_the_log += o.installs_past_the_log;
        self.syncs += o.syncs;
        self.clean_reopens += o.clean_reopens;
        self.crashes += o.crashes;
        self.crashes_that_lost_writes += o.crashes_that_lost_writes;
    }
}

/// A rule of the contract (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    HardState,
    KeptSnapshot,
    Compaction,
    Truncation,
    Entries,
    Incoming,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::HardState => "hard state",
            Rule::KeptSnapshot => "kept snapshot",
            Rule::Compaction => "compaction and reset",
            Rule::Truncation => "truncation",
            Rule::Entries => "entries",
            Rule::Incoming => "snapshot being received",
        }
    }
}

/// A batch the generator built, owning what it writes.
#[derive(Clone, Debug, Default)]
struct Planned {
    hard_state: Option<HardState>,
    chunk: Option<(SnapshotMeta, u64, Vec<u8>)>,
    /// The kept snapshot changes: installed from a leader (true) or taken.
    snapshot: Option<(bool, SnapshotMeta)>,
    reset: Option<(Index, Term)>,
    truncate_from: Option<Index>,
    entries: Vec<OwnedEntry>,
    compact_through: Option<Index>,
}

impl Planned {
    /// The writes, in the contract's order: one each but entries, one per entry.
    fn writes(&self) -> usize {
        usize::from(self.hard_state.is_some())
            + usize::from(self.chunk.is_some())
            + usize::from(self.snapshot.is_some())
            + usize::from(self.reset.is_some())
            + usize::from(self.truncate_from.is_some())
            + self.entries.len()
            + usize::from(self.compact_through.is_some())
    }

    fn is_empty(&self) -> bool {
        self.writes() == 0
    }

    /// Calls `f` with the batch of its first `writes` writes (all of them with
    /// `usize::MAX`), without compaction if `compact` is false.
    fn with_batch<R>(
        &self,
        token: u64,
        writes: usize,
        compact: bool,
        f: impl FnOnce(&Batch<'_>) -> R,
    ) -> R {
        let mut left = writes;
        // Takes one more write, if any is left.
        fn take(left: &mut usize) -> bool {
            let t = *left > 0;
            *left -= usize::from(t);
            t
        }
        let hard_state = self.hard_state.filter(|_| take(&mut left));
        let chunk = self.chunk.as_ref().filter(|_| take(&mut left));
        let snapshot = self.snapshot.as_ref().filter(|_| take(&mut left));
        let reset = self.reset.filter(|_| take(&mut left));
        let truncate_from = self.truncate_from.filter(|_| take(&mut left));
        let n = self.entries.len().min(left);
        left -= n;
        let compact_through = self.compact_through.filter(|_| compact && take(&mut left));
        let entries: Vec<Entry<'_>> = self.entries[..n].iter().map(|e| e.as_entry()).collect();
        let batch = Batch {
            token: SyncToken(token),
            hard_state,
            snapshot_chunk: chunk.map(|(meta, offset, data)| SnapshotChunkWrite {
                meta,
                offset: *offset,
                data,
            }),
            snapshot: snapshot.map(|(installed, meta)| {
                if *installed {
                    SnapshotWrite::Installed(meta)
                } else {
                    SnapshotWrite::Taken(meta)
                }
            }),
            reset,
            truncate_from,
            entries: Entries::from_slice(&entries),
            compact_through,
        };
        f(&batch)
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(hs) = self.hard_state {
            parts.push(format!("term {} vote {:?}", hs.current_term, hs.voted_for));
        }
        if let Some((meta, offset, data)) = &self.chunk {
            parts.push(format!(
                "{} bytes at {offset} of snapshot {}/{}",
                data.len(),
                meta.index,
                meta.term
            ));
        }
        match &self.snapshot {
            Some((true, m)) => parts.push(format!("install {}/{}", m.index, m.term)),
            Some((false, m)) => parts.push(format!("keep own {}/{}", m.index, m.term)),
            None => {}
        }
        if let Some((index, term)) = self.reset {
            parts.push(format!("reset after {index}/{term}"));
        }
        if let Some(from) = self.truncate_from {
            parts.push(format!("truncate from {from}"));
        }
        if let (Some(a), Some(b)) = (self.entries.first(), self.entries.last()) {
            parts.push(format!("entries {}..={}", a.index, b.index));
        }
        if let Some(through) = self.compact_through {
            parts.push(format!("compact through {through}"));
        }
        parts.join(", ")
    }
}

/// The reference's state: `store` performs batches as they come; `full` performs them
/// without their compactions (the entries a store that compacts later still holds).
#[derive(Clone, Debug, Default)]
struct Model {
    store: MemStore,
    full: MemStore,
}

impl Model {
    fn apply(&mut self, planned: &Planned, token: u64, writes: usize) {
        planned.with_batch(token, writes, true, |b| self.store.persist(b));
        planned.with_batch(token, writes, false, |b| self.full.persist(b));
    }

    fn save_taken(&mut self, index: Index, bytes: &[u8]) {
        self.store.save_taken(index, bytes.to_vec());
        self.full.save_taken(index, bytes.to_vec());
    }

    fn term(&self, index: Index) -> Option<Term> {
        let s = &self.store;
        if index == s.compacted.0 {
            Some(s.compacted.1)
        } else {
            s.entry(index).map(|e| e.term)
        }
    }

    fn kept_index(&self) -> Index {
        self.store.snapshot.as_ref().map_or(0, |(m, _)| m.index)
    }

    /// The first rule `r` breaks against this state, and how.
    fn mismatch(&self, r: &Recovered) -> Option<(Rule, String)> {
        let s = &self.store;
        if r.hard_state != s.hard_state {
            return Some((
                Rule::HardState,
                format!("recovered {:?}, written {:?}", r.hard_state, s.hard_state),
            ));
        }
        let meta = s.snapshot.as_ref().map(|(m, _)| *m);
        if r.snapshot_meta != meta {
            let show = |m: Option<SnapshotMeta>| m.map(|m| (m.index, m.term, m.config().len()));
            return Some((
                Rule::KeptSnapshot,
                format!(
                    "recovered metadata (index, term, config bytes) {:?}, written {:?}",
                    show(r.snapshot_meta),
                    show(meta)
                ),
            ));
        }
        let bytes = s.snapshot.as_ref().map(|(_, b)| b);
        if r.snapshot_bytes.as_ref() != bytes {
            return Some((
                Rule::KeptSnapshot,
                format!(
                    "recovered {:?} bytes of the snapshot through {:?}, written {:?} (or they differ)",
                    r.snapshot_bytes.as_ref().map(Vec::len),
                    meta.map(|m| m.index),
                    bytes.map(|b| b.len())
                ),
            ));
        }
        let (at, term) = r.compacted;
        let full = &self.full;
        // Entries the kept snapshot covers may go whenever the store likes.
        let latest = s.compacted.0.max(self.kept_index());
        if at > latest || at < full.compacted.0 {
            return Some((
                Rule::Compaction,
                format!(
                    "the log starts after {at}; compaction asked through {}, the kept snapshot \
                     through {}, last reset after {}",
                    s.compacted.0,
                    self.kept_index(),
                    full.compacted.0
                ),
            ));
        }
        let want_term = if at == full.compacted.0 {
            Some(full.compacted.1)
        } else {
            full.entry(at).map(|e| e.term)
        };
        if Some(term) != want_term {
            return Some((
                Rule::Compaction,
                format!("the term before the log (index {at}) is {term}, written {want_term:?}"),
            ));
        }
        let last = at + r.entries.len() as u64;
        let want_last = full.last_index();
        for (k, got) in r.entries.iter().enumerate() {
            let index = at + 1 + k as u64;
            let Some(want) = full.entry(index) else {
                break;
            };
            let want = OwnedEntry::from(want);
            if *got != want {
                let show = |e: &OwnedEntry| {
                    format!(
                        "index {} term {} {:?} {} bytes",
                        e.index,
                        e.term,
                        e.kind,
                        e.data.len()
                    )
                };
                return Some((
                    Rule::Entries,
                    format!(
                        "entry {k} after {at} recovered as ({}), written ({})",
                        show(got),
                        show(&want)
                    ),
                ));
            }
        }
        if last > want_last {
            return Some((
                Rule::Truncation,
                format!(
                    "the log ends at {last}: entries {}..={last} were removed",
                    want_last + 1
                ),
            ));
        }
        if last < want_last {
            return Some((
                Rule::Entries,
                format!(
                    "the log ends at {last}: entries {}..={want_last} were lost",
                    last + 1
                ),
            ));
        }
        if let Some((m, b)) = &r.incoming {
            if s.incoming.as_ref() != Some(&(*m, b.clone())) {
                return Some((
                    Rule::Incoming,
                    format!(
                        "recovered {} bytes of snapshot {}/{}, written {:?}",
                        b.len(),
                        m.index,
                        m.term,
                        s.incoming.as_ref().map(|(m, b)| (m.index, m.term, b.len()))
                    ),
                ));
            }
        }
        None
    }
}

/// A snapshot being sent to the store in chunks.
struct Receiving {
    meta: SnapshotMeta,
    bytes: Vec<u8>,
    sent: usize,
}

struct Run<'o, S> {
    options: &'o Options,
    seed: u64,
    step: usize,
    /// What the last steps did, the current one last, for a failure's message.
    recent: Vec<(usize, String)>,
    store: S,
    rng: Rng,
    /// Every batch performed.
    written: Model,
    /// Through the last sync.
    durable: Model,
    /// Batches performed since the last sync, with their tokens.
    pending: Vec<(u64, Planned)>,
    token: u64,
    term: Term,
    receiving: Option<Receiving>,
    seen: Report,
}

impl<'o, S: DurableStore> Run<'o, S> {
    fn new(options: &'o Options, seed: u64, store: S) -> Self {
        Run {
            options,
            seed,
            step: 0,
            recent: Vec::new(),
            store,
            rng: Rng::new(seed ^ 0x636F_7261_636C_6521),
            written: Model::default(),
            durable: Model::default(),
            pending: Vec::new(),
            token: 0,
            term: 0,
            receiving: None,
            seen: Report::default(),
        }
    }

    /// Notes what the current step does (a step may do several things).
    fn doing(&mut self, what: String) {
        if self.recent.len() == 8 {
            self.recent.remove(0);
        }
        self.recent.push((self.step, what));
    }

    fn fail(&self, rule: &str, detail: &str) -> ! {
        let what = self.recent.last().map_or("", |(_, w)| w.as_str());
        let mut before = String::new();
        for (step, w) in &self.recent[..self.recent.len().saturating_sub(1)] {
            before.push_str(&format!("\n  step {step}: {w}"));
        }
        panic!(
            "durable store conformance: rule `{rule}` broken (seed {}, step {}: {what}): \
             {detail}; replay with conformance::durable::check_seed(&options, {}, store); \
             the steps before:{before}",
            self.seed, self.step, self.seed
        )
    }

    fn ok<T, E: fmt::Debug>(&self, r: Result<T, E>, doing: &str) -> T {
        match r {
            Ok(t) => t,
            Err(e) => self.fail("performs valid batches", &format!("{doing} failed: {e:?}")),
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.in_range(0, 100) < percent
    }

    /// A value in `lo..=hi` (`lo` if the range is empty).
    fn pick(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.in_range(lo, (hi + 1).saturating_sub(lo))
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.rng.next_u64() as u8).collect()
    }

    fn one_step(&mut self) {
        let roll = self.rng.in_range(0, 100);
        match roll {
            0..=5 => self.crash(),
            6..=9 => {
                self.doing(String::from("a clean reopen"));
                self.clean_reopen();
            }
            10..=29 => {
                self.doing(String::from("a sync"));
                self.sync();
            }
            _ => self.batch(),
        }
    }

    fn sync(&mut self) {
        let r = self.store.sync();
        self.ok(r, "sync");
        self.seen.syncs += 1;
        self.durable = self.written.clone();
        self.pending.clear();
    }

    fn clean_reopen(&mut self) {
        self.sync();
        self.seen.clean_reopens += 1;
        let r = self.store.reopen();
        let recovered = self.ok(r, "reopen");
        if let Some((rule, detail)) = self.durable.mismatch(&recovered) {
            self.fail(rule.name(), &detail);
        }
        self.receiving = None;
    }

    fn crash(&mut self) {
        let keep = self.pick(0, self.pending.len() as u64) as usize;
        let torn_entries = if self.chance(30) {
            Some(self.pick(0, 3) as usize)
        } else {
            None
        };
        self.doing(format!(
            "a crash with {} batches not synced (suggested: keep {keep}, torn {torn_entries:?})",
            self.pending.len()
        ));
        self.store.crash(Crash { keep, torn_entries });
        let r = self.store.reopen();
        let recovered = self.ok(r, "reopen after a crash");
        self.seen.crashes += 1;
        // The states a crash may leave: everything performed (most stores, most of the
        // time), or the synced state and a prefix of the writes since, in order.
        let mut all = self.durable.clone();
        for (token, planned) in &self.pending {
            all.apply(planned, *token, usize::MAX);
        }
        let found = match all.mismatch(&recovered) {
            None => all,
            Some(last) => {
                let found = self.lost_writes(&recovered, last);
                self.seen.crashes_that_lost_writes += 1;
                found
            }
        };
        self.written = found.clone();
        self.durable = found;
        self.pending.clear();
        self.receiving = None;
        self.term = self.term.max(self.written.store.hard_state.current_term);
    }

    /// The state after the synced batches and a prefix of the writes since that
    /// `recovered` is; a failure naming the closest if none is (`last`: how everything
    /// performed differs).
    fn lost_writes(&self, recovered: &Recovered, last: (Rule, String)) -> Model {
        let mut state = self.durable.clone();
        let mut closest = last;
        for (k, (token, planned)) in self.pending.iter().enumerate() {
            for writes in 0..planned.writes() {
                let mut candidate = state.clone();
                candidate.apply(planned, *token, writes);
                match candidate.mismatch(recovered) {
                    None => return candidate,
                    Some(m) if m.0 > closest.0 => {
                        closest = (
                            m.0,
                            format!("{} (with {k} batches and {writes} writes of the next)", m.1),
                        );
                    }
                    Some(_) => {}
                }
            }
            state.apply(planned, *token, usize::MAX);
        }
        self.fail(
            closest.0.name(),
            &format!(
                "no state a crash may leave matches; the closest: {}",
                closest.1
            ),
        )
    }

    fn entry(&mut self, index: Index, term: Term) -> OwnedEntry {
        let kind = match self.rng.in_range(0, 100) {
            0..=7 => EntryKind::Noop,
            8..=14 => EntryKind::Membership,
            _ => EntryKind::Command,
        };
        let len = if kind == EntryKind::Noop {
            0
        } else {
            self.pick(0, self.options.max_entry_bytes as u64) as usize
        };
        OwnedEntry {
            index,
            term,
            kind,
            data: self.bytes(len),
        }
    }

    fn meta(&mut self, index: Index, term: Term) -> SnapshotMeta {
        let len = self.pick(0, self.options.max_config_bytes as u64) as usize;
        let config = self.bytes(len);
        SnapshotMeta::new(index, term, &config).unwrap_or(SnapshotMeta {
            index,
            term,
            ..SnapshotMeta::EMPTY
        })
    }

    fn snapshot_len(&mut self) -> usize {
        let r = &self.options.snapshot_bytes;
        self.pick(*r.start() as u64, *r.end() as u64) as usize
    }

    /// The host snapshots its state machine at a durable index above the kept snapshot,
    /// compacting through it or a little behind: the snapshot change of `b`.
    fn take_snapshot(&mut self, b: &mut Planned, at_last: bool) -> Option<Index> {
        let w = &self.written;
        let d = &self.durable;
        let lo = w.kept_index().max(w.store.compacted.0) + 1;
        let hi = d.store.last_index().min(w.store.last_index());
        // Applied entries are committed: the same in what is durable and what is written.
        let hi = (lo..=hi)
            .take_while(|&i| w.term(i).is_some() && w.term(i) == d.term(i))
            .last()?;
        let index = if at_last { hi } else { self.pick(lo, hi) };
        let term = self.written.term(index)?;
        let meta = self.meta(index, term);
        let len = self.snapshot_len();
        let bytes = self.bytes(len);
        let r = self.store.save_taken(&meta, &bytes);
        self.ok(r, "save_taken");
        self.written.save_taken(index, &bytes);
        self.durable.save_taken(index, &bytes);
        b.snapshot = Some((false, meta));
        let behind = if at_last { 0 } else { self.pick(0, 2) };
        let through = index - behind.min(index - 1);
        if through > self.written.store.compacted.0 {
            b.compact_through = Some(through);
        }
        Some(index)
    }

    /// The next chunk of the snapshot being received (a new one is started now and then);
    /// the last installs it. Returns the new floor of truncations (the snapshot's index)
    /// and the log's last index after a reset.
    fn receive(&mut self, b: &mut Planned) -> Option<(Index, Option<Index>)> {
        if self.receiving.is_none() {
            if !self.chance(8) {
                return None;
            }
            let w = &self.written;
            let lo = w.kept_index().max(w.store.compacted.0) + 1;
            let last = w.store.last_index();
            let (index, term) = match self.rng.in_range(0, 3) {
                // Inside the log, with the term there: the log after it is kept.
                0 if lo <= last => {
                    let i = self.pick(lo, last);
                    (i, self.written.term(i)?)
                }
                // Inside the log, with another term: the log is reset.
                1 if lo <= last => {
                    self.term += 1;
                    (self.pick(lo, last), self.term)
                }
                // Past the end of the log.
                _ => {
                    self.term += self.pick(0, 1);
                    (last + 1 + self.pick(0, 3), self.term.max(1))
                }
            };
            let meta = self.meta(index, term);
            let len = self.snapshot_len();
            let bytes = self.bytes(len);
            self.receiving = Some(Receiving {
                meta,
                bytes,
                sent: 0,
            });
        } else if !self.chance(60) {
            return None;
        }
        let r = self.receiving.as_mut()?;
        let left = r.bytes.len() - r.sent;
        let len = (self.rng.in_range(1, self.options.chunk_bytes.max(1) as u64) as usize).min(left);
        let r = self.receiving.as_mut()?;
        let (offset, done) = (r.sent, r.sent + len == r.bytes.len());
        let meta = r.meta;
        if done && meta.index <= self.written.kept_index() {
            // Stale (the host took a later snapshot meanwhile): the node refuses it.
            self.receiving = None;
            return None;
        }
        b.chunk = Some((meta, offset as u64, r.bytes[offset..offset + len].to_vec()));
        self.seen.chunks_after_the_first += u32::from(offset > 0);
        r.sent += len;
        if !done {
            return Some((0, None));
        }
        self.receiving = None;
        b.snapshot = Some((true, meta));
        if self.written.term(meta.index) == Some(meta.term) {
            self.seen.installs_keeping_the_log += 1;
            b.compact_through = Some(meta.index);
            Some((meta.index, None))
        } else {
            if meta.index <= self.written.store.last_index() {
                self.seen.installs_resetting_the_log += 1;
            } else {
                self.seen.installs_past_the_log += 1;
            }
            b.reset = Some((meta.index, meta.term));
            Some((meta.index, Some(meta.index)))
        }
    }

    fn batch(&mut self) {
        let mut b = Planned::default();
        let w = &self.written.store;
        let mut last = w.last_index();
        let mut floor = self.written.kept_index().max(w.compacted.0);
        let live = last - w.compacted.0;
        let room_for_a_batch = self.options.max_entries_per_batch as u64;
        if live + room_for_a_batch >= self.options.max_live_entries {
            // The memory log is full: sync, snapshot at the last entry, compact.
            self.sync();
            if self.take_snapshot(&mut b, true).is_some() {
                self.seen.taken_for_room += 1;
                self.perform(b, "a snapshot to make room");
            }
            return;
        }
        if self.term == 0 || self.chance(15) {
            self.term += 1;
            let vote = self.chance(70).then(|| self.pick(1, 5));
            b.hard_state = Some(HardState {
                current_term: self.term,
                voted_for: vote,
            });
        }
        if self.chance(8) {
            if let Some(index) = self.take_snapshot(&mut b, false) {
                self.seen.taken += 1;
                floor = floor.max(index);
            }
        } else if let Some((index, reset)) = self.receive(&mut b) {
            floor = floor.max(index);
            last = reset.unwrap_or(last);
        }
        let mut term = self.term.max(1);
        if b.reset.is_none() && floor < last && self.chance(12) {
            // A conflict: the suffix from `from` is replaced by entries of a newer term.
            let from = self.pick(floor + 1, last);
            b.truncate_from = Some(from);
            last = from - 1;
            self.term += 1;
            term = self.term;
            self.seen.conflicts += 1;
        } else if b.reset.is_none() && self.chance(5) {
            // Entries appended and cut again before the batch left.
            let k = self.pick(1, 3);
            let from = last + 1 + self.pick(0, k - 1);
            for i in last + 1..from {
                let e = self.entry(i, term);
                b.entries.push(e);
            }
            b.truncate_from = Some(from);
            last = from - 1;
            self.term += 1;
            term = self.term;
            self.seen.cut_in_the_batch += 1;
        }
        let compacted = self.written.store.compacted.0;
        let room = self
            .options
            .max_live_entries
            .saturating_sub(last.saturating_sub(compacted) + b.entries.len() as u64);
        if self.chance(70) {
            let n = self
                .pick(1, self.options.max_entries_per_batch as u64)
                .min(room);
            for index in last + 1..=last + n {
                let e = self.entry(index, term);
                b.entries.push(e);
            }
        }
        if b.is_empty() {
            b.hard_state = Some(HardState {
                current_term: self.term,
                voted_for: Some(self.pick(1, 5)),
            });
        }
        self.perform(b, "a batch");
    }

    fn perform(&mut self, b: Planned, what: &str) {
        self.token += 1;
        self.doing(format!("{what}: {}", b.describe()));
        let r = b.with_batch(self.token, usize::MAX, true, |batch| {
            self.store.perform(batch)
        });
        self.ok(r, "perform");
        self.seen.batches += 1;
        let kinds = b.writes() - b.entries.len() + usize::from(!b.entries.is_empty());
        self.seen.many_writes += u32::from(kinds >= 3);
        self.written.apply(&b, self.token, usize::MAX);
        self.pending.push((self.token, b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Options {
        Options {
            seeds: 0..24,
            ..Options::default()
        }
    }

    /// A reference store that records what it is asked to do.
    #[derive(Default)]
    struct Recorder {
        store: MemStore,
        calls: Vec<String>,
    }

    impl DurableStore for Recorder {
        type Error = core::convert::Infallible;

        fn perform(&mut self, batch: &Batch<'_>) -> Result<(), Self::Error> {
            self.calls.push(format!("{batch:?}"));
            self.store.perform(batch)
        }

        fn save_taken(&mut self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), Self::Error> {
            self.calls.push(format!("save {} {bytes:?}", meta.index));
            DurableStore::save_taken(&mut self.store, meta, bytes)
        }

        fn sync(&mut self) -> Result<(), Self::Error> {
            self.calls.push(String::from("sync"));
            Ok(())
        }

        fn crash(&mut self, hint: Crash) {
            self.calls.push(format!("{hint:?}"));
        }

        fn reopen(&mut self) -> Result<Recovered, Self::Error> {
            self.calls.push(String::from("reopen"));
            self.store.reopen()
        }
    }

    #[test]
    #[should_panic(expected = "max_live_entries (8) must exceed max_entries_per_batch (8)")]
    fn options_that_cannot_make_a_run_are_refused() {
        let options = Options {
            max_live_entries: 8,
            ..Options::default()
        };
        check(&options, MemStore::new);
    }

    /// A seed replays exactly (what a failure's message promises); another seed differs.
    #[test]
    fn a_seed_replays_the_same_calls() {
        let options = Options::default();
        let calls = |seed| {
            let mut run = Run::new(&options, seed, Recorder::default());
            for _ in 0..options.steps {
                run.one_step();
            }
            run.store.calls
        };
        let first = calls(7);
        assert!(first.len() > options.steps / 2);
        assert_eq!(first, calls(7));
        assert_ne!(first, calls(8));
    }

    #[test]
    fn the_reference_store_passes() {
        check(&quick(), MemStore::new);
    }

    /// The generator does everything the module documentation says, with the default
    /// options, and a store that loses writes in a crash is seen to lose some.
    #[test]
    fn the_default_seeds_exercise_every_kind_of_step() {
        let seen = check(&Options::default(), MemStore::new);
        let Report {
            batches,
            many_writes,
            conflicts,
            cut_in_the_batch,
            taken,
            taken_for_room,
            chunks_after_the_first,
            installs_keeping_the_log,
            installs_resetting_the_log,
            installs_past_the_log,
            syncs,
            clean_reopens,
            crashes,
            crashes_that_lost_writes,
        } = seen;
        for (what, n) in [
            ("batches", batches),
            ("many_writes", many_writes),
            ("conflicts", conflicts),
            ("cut_in_the_batch", cut_in_the_batch),
            ("taken", taken),
            ("taken_for_room", taken_for_room),
            ("chunks_after_the_first", chunks_after_the_first),
            ("installs_keeping_the_log", installs_keeping_the_log),
            ("installs_resetting_the_log", installs_resetting_the_log),
            ("installs_past_the_log", installs_past_the_log),
            ("syncs", syncs),
            ("clean_reopens", clean_reopens),
            ("crashes", crashes),
        ] {
            assert!(n >= 10, "{what}: {n} in {seen:?}");
        }
        assert_eq!(crashes_that_lost_writes, 0, "the reference loses nothing");
        let lossy = check(&Options::default(), Disk::default);
        assert!(lossy.crashes_that_lost_writes >= 10, "{lossy:?}");
    }

    /// A store that performs through a [`MemStore`] but changes what it is given:
    /// each breaks one rule, and the suite must name it.
    struct Broken {
        store: MemStore,
        bug: Bug,
    }

    #[derive(Clone, Copy)]
    enum Bug {
        ForgetsTheVote,
        IgnoresTruncation,
        IgnoresReset,
        LosesTakenSnapshotBytes,
        LosesTheLastEntry,
        CompactsPastTheBatch,
        KeepsStaleIncoming,
        RefusesEmptyEntries,
    }

    impl DurableStore for Broken {
        type Error = &'static str;

        fn perform(&mut self, batch: &Batch<'_>) -> Result<(), Self::Error> {
            let mut b = *batch;
            match self.bug {
                Bug::IgnoresTruncation => b.truncate_from = None,
                Bug::IgnoresReset => b.reset = None,
                Bug::CompactsPastTheBatch => b.compact_through = b.compact_through.map(|c| c + 1),
                Bug::RefusesEmptyEntries if b.entries.iter().any(|e| e.data.is_empty()) => {
                    return Err("empty entry");
                }
                _ => {}
            }
            self.store.persist(&b);
            Ok(())
        }

        fn save_taken(&mut self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), Self::Error> {
            let bytes = match self.bug {
                Bug::LosesTakenSnapshotBytes => Vec::new(),
                _ => bytes.to_vec(),
            };
            self.store.save_taken(meta.index, bytes);
            Ok(())
        }

        fn sync(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }

        fn crash(&mut self, _: Crash) {}

        fn reopen(&mut self) -> Result<Recovered, Self::Error> {
            let mut r = Recovered::from_store(&self.store);
            match self.bug {
                Bug::ForgetsTheVote => r.hard_state.voted_for = None,
                Bug::LosesTheLastEntry => {
                    r.entries.pop();
                }
                Bug::KeepsStaleIncoming => {
                    if let Some((m, b)) = &self.store.snapshot {
                        r.incoming = Some((*m, b.clone()));
                    }
                }
                _ => {}
            }
            Ok(r)
        }
    }

    fn broken(bug: Bug) {
        check(&quick(), || Broken {
            store: MemStore::new(),
            bug,
        });
    }

    #[test]
    #[should_panic(expected = "rule `hard state` broken")]
    fn a_store_that_forgets_the_vote_fails() {
        broken(Bug::ForgetsTheVote);
    }

    #[test]
    #[should_panic(expected = "rule `truncation` broken")]
    fn a_store_that_ignores_truncations_fails() {
        broken(Bug::IgnoresTruncation);
    }

    #[test]
    #[should_panic(expected = "rule `compaction and reset` broken")]
    fn a_store_that_ignores_resets_fails() {
        broken(Bug::IgnoresReset);
    }

    #[test]
    #[should_panic(expected = "rule `compaction and reset` broken")]
    fn a_store_that_compacts_an_entry_too_many_fails() {
        broken(Bug::CompactsPastTheBatch);
    }

    #[test]
    #[should_panic(expected = "rule `kept snapshot` broken")]
    fn a_store_that_loses_its_own_snapshot_bytes_fails() {
        broken(Bug::LosesTakenSnapshotBytes);
    }

    #[test]
    #[should_panic(expected = "rule `entries` broken")]
    fn a_store_that_loses_the_last_entry_fails() {
        broken(Bug::LosesTheLastEntry);
    }

    #[test]
    #[should_panic(expected = "rule `snapshot being received` broken")]
    fn a_store_that_reports_chunks_it_was_not_given_fails() {
        broken(Bug::KeepsStaleIncoming);
    }

    #[test]
    #[should_panic(expected = "rule `performs valid batches` broken")]
    fn a_store_that_refuses_empty_entries_fails() {
        broken(Bug::RefusesEmptyEntries);
    }

    /// A store that models a disk: batches are durable only with a sync, and a crash keeps
    /// what the suite suggests, the last batch perhaps torn.
    #[derive(Default)]
    struct Disk {
        durable: MemStore,
        written: MemStore,
        pending: Vec<Planned>,
        /// A crash keeps a later batch without an earlier one.
        reorders: bool,
    }

    impl DurableStore for Disk {
        type Error = core::convert::Infallible;

        fn perform(&mut self, batch: &Batch<'_>) -> Result<(), Self::Error> {
            self.written.persist(batch);
            self.pending.push(Planned {
                hard_state: batch.hard_state,
                chunk: batch
                    .snapshot_chunk
                    .map(|c| (*c.meta, c.offset, c.data.to_vec())),
                snapshot: batch
                    .snapshot
                    .map(|s| (matches!(s, SnapshotWrite::Installed(_)), *s.meta())),
                reset: batch.reset,
                truncate_from: batch.truncate_from,
                entries: batch.entries.iter().map(OwnedEntry::from).collect(),
                compact_through: batch.compact_through,
            });
            Ok(())
        }

        fn save_taken(&mut self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), Self::Error> {
            self.durable.save_taken(meta.index, bytes.to_vec());
            self.written.save_taken(meta.index, bytes.to_vec());
            Ok(())
        }

        fn sync(&mut self) -> Result<(), Self::Error> {
            self.durable = self.written.clone();
            self.pending.clear();
            Ok(())
        }

        fn crash(&mut self, hint: Crash) {
            let keep = hint.keep.min(self.pending.len());
            for (k, p) in self.pending.iter().enumerate().take(keep) {
                if self.reorders && k == 0 && keep > 1 {
                    continue;
                }
                // A torn batch: its first `n` entries, no compaction.
                let writes = match hint.torn_entries {
                    Some(n) if k + 1 == keep => p.writes() - p.entries.len() + n,
                    _ => usize::MAX,
                };
                let whole = writes == usize::MAX;
                p.with_batch(0, writes, whole, |b| self.durable.persist(b));
            }
            self.pending.clear();
            self.written = self.durable.clone();
        }

        fn reopen(&mut self) -> Result<Recovered, Self::Error> {
            Ok(Recovered::from_store(&self.durable))
        }
    }

    #[test]
    fn a_disk_that_loses_what_was_not_synced_passes() {
        check(&quick(), Disk::default);
    }

    #[test]
    #[should_panic(expected = "no state a crash may leave matches")]
    fn a_disk_that_reorders_writes_in_a_crash_fails() {
        check(&quick(), || Disk {
            reorders: true,
            ..Disk::default()
        });
    }
}
