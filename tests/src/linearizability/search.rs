//! The search for a linearization of one key's operations.
//!
//! This is the algorithm of Wing & Gong as improved by Lowe ("Testing for
//! linearizability", 2017) and used by porcupine: the history becomes a list of call and
//! return events sorted by time; a depth-first search repeatedly picks an operation whose
//! call comes before the first remaining return, applies it to the model, and removes its
//! two events from the list ("lifts" it); reaching a return whose operation is not yet
//! linearized means backtracking. A cache of the configurations already explored (the set
//! of linearized operations as a bitset, plus the model's value) keeps the search from
//! exploring the same configuration twice.
//!
//! Indeterminate operations have no return event (their completion time is infinity), so
//! they never force a backtrack; they are only tried where they change the value, since an
//! indeterminate operation that changes nothing might as well never have happened, and
//! of several identical ones only the earliest unused is tried. Once no return event
//! remains, every determinate operation is placed and the rest can be left out (taking
//! effect "after the end"), so the history is linearizable. Indeterminate reads are left
//! out from the start.
//!
//! The search is exhaustive when the history is not linearizable: its cost grows with
//! the number of configurations reachable before the failure, that is with concurrency
//! and, above all, with the number of distinct indeterminate operations that may or may
//! not have taken effect (each one can double it).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use super::history::{Key, Op, Operation, Output, Value};
use super::report::{Candidate, Report, Verdict};
use super::Budget;

/// The end of a linked list, or "no such entry".
const NIL: usize = usize::MAX;
/// The list's head sentinel is entry 0.
const HEAD: usize = 0;
/// How many steps between two looks at the clock.
const CLOCK_EVERY: u64 = 4096;

/// The result of checking one key.
pub(super) enum KeyVerdict {
    Linearizable,
    NotLinearizable(Report),
    Exhausted,
}

/// Checks the operations of `key` (all of them must be on `key`).
pub(super) fn check_key(key: Key, operations: &[Operation], budget: &Budget) -> KeyVerdict {
    // An indeterminate read neither constrains nor changes anything: leave it out.
    let mut kept: Vec<Operation> = operations
        .iter()
        .filter(|o| o.output().is_some() || !matches!(o.op, Op::Get { .. }))
        .copied()
        .collect();
    // Determinate operations first, then indeterminate ones, each in invocation order.
    kept.sort_by_key(|o| (o.output().is_none(), o.invoked, o.id));
    let determinate = kept.iter().take_while(|o| o.output().is_some()).count();
    let mut last_twin: HashMap<Op, usize> = HashMap::new();
    let ops: Vec<LocalOp> = kept
        .into_iter()
        .enumerate()
        .map(|(i, operation)| {
            let expected = operation.output();
            let twin = match expected {
                Some(_) => NIL,
                None => last_twin.insert(operation.op, i).unwrap_or(NIL),
            };
            LocalOp {
                operation,
                expected,
                zobrist: splitmix64(0x1234_5678_9abc_def0 ^ i as u64),
                twin,
            }
        })
        .collect();
    let mut search = Search::new(&ops);
    match search.run(determinate, budget) {
        Run::Linearizable => KeyVerdict::Linearizable,
        Run::Exhausted => KeyVerdict::Exhausted,
        Run::Stuck(snapshot) => KeyVerdict::NotLinearizable(search.report(key, snapshot)),
    }
}

/// An operation of the key being checked.
struct LocalOp {
    operation: Operation,
    /// The recorded output; `None` if indeterminate (or pending).
    expected: Option<Output>,
    /// A random value; the hash of a set of operations is the xor of theirs.
    zobrist: u64,
    /// For an indeterminate operation, the previous indeterminate operation (in
    /// invocation order) that does exactly the same thing, or `NIL`. Such twins are
    /// interchangeable once both are invoked, so only the first unused one is tried.
    twin: usize,
}

impl LocalOp {
    /// The value after taking effect on `value`, or `None` if it cannot take effect here
    /// (wrong output), or need not (indeterminate and changes nothing).
    fn step(&self, value: Option<Value>) -> Option<Option<Value>> {
        let (after, output) = self.operation.op.apply(value);
        match self.expected {
            Some(expected) => (expected == output).then_some(after),
            None => (after != value).then_some(after),
        }
    }
}

/// A call or return event; events are stored in time order after the head sentinel.
#[derive(Clone, Copy)]
struct Event {
    /// Index of the operation in `ops`.
    op: usize,
    is_call: bool,
    /// For a call: the entry of its return event, or `NIL` if indeterminate.
    ret: usize,
}

/// Where the search got stuck: at the return event `position`, after linearizing
/// `prefix`, with `candidates` all unable to come next.
struct Snapshot {
    position: usize,
    prefix: Vec<usize>,
    value: Option<Value>,
    candidates: Vec<usize>,
}

enum Run {
    Linearizable,
    Exhausted,
    Stuck(Snapshot),
}

struct Search<'a> {
    ops: &'a [LocalOp],
    /// Entry 0 is the head sentinel; entries 1.. are the events in time order.
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [LocalOp]) -> Self {
        // (time, 0 for a call or 1 for a return, op): at equal times calls come first, so
        // operations whose intervals touch are concurrent.
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            order.push((op.operation.invoked, 0, i));
            if let Some(completed) = op.operation.completed() {
                order.push((completed, 1, i));
            }
        }
        order.sort_unstable();
        let mut events = Vec::with_capacity(order.len() + 1);
        events.push(Event {
            op: NIL,
            is_call: false,
            ret: NIL,
        });
        let mut call_entry = vec![NIL; ops.len()];
        for &(_, kind, op) in &order {
            let entry = events.len();
            if kind == 0 {
                call_entry[op] = entry;
            } else {
                events[call_entry[op]].ret = entry;
            }
            events.push(Event {
                op,
                is_call: kind == 0,
                ret: NIL,
            });
        }
        let len = events.len();
        let next = (0..len)
            .map(|i| if i + 1 < len { i + 1 } else { NIL })
            .collect();
        let prev = (0..len).map(|i| i.wrapping_sub(1)).collect();
        Self {
            ops,
            events,
            next,
            prev,
        }
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        if next != NIL {
            self.prev[next] = entry;
        }
    }

    /// Removes the call event `call` and its return from the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.events[call].ret;
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Undoes [`lift`](Self::lift) (links are restored in reverse order).
    fn unlift(&mut self, call: usize) {
        let ret = self.events[call].ret;
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }

    fn run(&mut self, determinate: usize, budget: &Budget) -> Run {
        let mut linearized = Linearized::new(determinate, self.ops.len());
        let mut hash = 0u64;
        let mut value: Option<Value> = None;
        // The calls linearized so far, with the value before each.
        let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
        let mut cache = Cache::default();
        let mut best: Option<Snapshot> = None;
        let mut steps = 0u64;
        let mut entry = self.next[HEAD];
        loop {
            if budget.max_steps.is_some_and(|max| steps >= max)
                || (steps.is_multiple_of(CLOCK_EVERY)
                    && budget.deadline.is_some_and(|d| Instant::now() >= d))
            {
                return Run::Exhausted;
            }
            steps += 1;
            if entry == NIL {
                // No return event left: only indeterminate operations remain.
                return Run::Linearizable;
            }
            let event = self.events[entry];
            if event.is_call {
                let op = &self.ops[event.op];
                let twin_unused = op.twin != NIL && !linearized.contains(op.twin);
                if let Some(after) = op.step(value).filter(|_| !twin_unused) {
                    linearized.insert(event.op);
                    hash ^= op.zobrist;
                    if cache.insert(&linearized, hash, after) {
                        stack.push((entry, value));
                        value = after;
                        self.lift(entry);
                        entry = self.next[HEAD];
                        continue;
                    }
                    linearized.remove(event.op);
                    hash ^= op.zobrist;
                }
                entry = self.next[entry];
            } else {
                // The operation of this return must have been linearized already.
                if best.as_ref().is_none_or(|b| entry > b.position) {
                    best = Some(self.snapshot(entry, &stack, value));
                }
                let Some((call, before)) = stack.pop() else {
                    let snapshot = best.expect("a snapshot was just taken");
                    return Run::Stuck(snapshot);
                };
                let op = self.events[call].op;
                linearized.remove(op);
                hash ^= self.ops[op].zobrist;
                value = before;
                self.unlift(call);
                entry = self.next[call];
            }
        }
    }

    fn snapshot(
        &self,
        position: usize,
        stack: &[(usize, Option<Value>)],
        value: Option<Value>,
    ) -> Snapshot {
        let prefix = stack
            .iter()
            .map(|&(call, _)| self.events[call].op)
            .collect();
        let mut candidates = Vec::new();
        let mut entry = self.next[HEAD];
        while entry != position && entry != NIL {
            candidates.push(self.events[entry].op);
            entry = self.next[entry];
        }
        Snapshot {
            position,
            prefix,
            value,
            candidates,
        }
    }

    fn report(&self, key: Key, snapshot: Snapshot) -> Report {
        let blocked = self.ops[self.events[snapshot.position].op].operation;
        let value = snapshot.value;
        let candidates = snapshot
            .candidates
            .iter()
            .map(|&i| {
                let op = &self.ops[i];
                let (after, output) = op.operation.op.apply(value);
                // An operation that fits here would have been tried before the search
                // first reached `position`, and its subtree would have got at least as far.
                let verdict = match op.expected {
                    Some(expected) => {
                        debug_assert_ne!(expected, output, "a fitting candidate is reported");
                        Verdict::WrongOutput { model: output }
                    }
                    None => {
                        debug_assert_eq!(after, value, "an effective candidate is reported");
                        Verdict::NoEffect
                    }
                };
                Candidate {
                    operation: op.operation,
                    verdict,
                }
            })
            .collect();
        Report {
            key,
            prefix: snapshot
                .prefix
                .iter()
                .map(|&i| self.ops[i].operation)
                .collect(),
            value_after_prefix: value,
            blocked,
            deadline: blocked.completed().unwrap_or(u64::MAX),
            candidates,
        }
    }
}

/// The set of linearized operations: a bitset over the determinate operations followed
/// by one over the indeterminate ones.
///
/// Determinate operations must all be linearized in the end, and the search mostly
/// linearizes them in order, so their bitset is mostly ones then zeros: only the words in
/// between, from `start` to `end`, are stored in the cache.
struct Linearized {
    words: Vec<u64>,
    /// The number of determinate operations.
    determinate: usize,
    /// The number of words holding determinate operations.
    split: usize,
    /// The first determinate word that is not full (`split` if all are).
    start: usize,
    /// One past the last determinate word that is not zero (0 if all are).
    end: usize,
}

impl Linearized {
    fn new(determinate: usize, total: usize) -> Self {
        let split = determinate.div_ceil(64);
        Self {
            words: vec![0; split + (total - determinate).div_ceil(64)],
            determinate,
            split,
            start: 0,
            end: 0,
        }
    }

    /// The word and bit of operation `i`.
    fn position(&self, i: usize) -> (usize, u64) {
        if i < self.determinate {
            (i / 64, 1 << (i % 64))
        } else {
            let j = i - self.determinate;
            (self.split + j / 64, 1 << (j % 64))
        }
    }

    /// The value of determinate word `w` when all its operations are linearized.
    fn full(&self, w: usize) -> u64 {
        let used = self.determinate - 64 * w;
        if used >= 64 {
            u64::MAX
        } else {
            (1 << used) - 1
        }
    }

    fn contains(&self, i: usize) -> bool {
        let (w, bit) = self.position(i);
        self.words[w] & bit != 0
    }

    fn insert(&mut self, i: usize) {
        let (w, bit) = self.position(i);
        self.words[w] |= bit;
        if w < self.split {
            while self.start < self.split && self.words[self.start] == self.full(self.start) {
                self.start += 1;
            }
            self.end = self.end.max(w + 1);
        }
    }

    fn remove(&mut self, i: usize) {
        let (w, bit) = self.position(i);
        self.words[w] &= !bit;
        if w < self.split {
            self.start = self.start.min(w);
            while self.end > 0 && self.words[self.end - 1] == 0 {
                self.end -= 1;
            }
        }
    }

    /// The words that identify the set along with `start`: the determinate words from
    /// `start` to `end`, then the indeterminate words.
    fn key(&self) -> (&[u64], &[u64]) {
        (
            &self.words[self.start..self.end.max(self.start)],
            &self.words[self.split..],
        )
    }
}

/// The configurations (set of linearized operations, value) already explored.
#[derive(Default)]
struct Cache {
    /// Hash of a configuration -> its latest entry in `entries` (a chain by `next`).
    index: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    entries: Vec<CacheEntry>,
    /// The stored words of every entry, one after the other.
    words: Vec<u64>,
}

struct CacheEntry {
    next: usize,
    value: Option<Value>,
    start: usize,
    offset: usize,
    determinate_len: usize,
}

impl Cache {
    /// Adds a configuration; returns `false` if it was already there. `set_hash` must be
    /// the xor of the Zobrist values of the operations in `set`.
    fn insert(&mut self, set: &Linearized, set_hash: u64, value: Option<Value>) -> bool {
        let (determinate, indeterminate) = set.key();
        let hash = set_hash ^ splitmix64(value.map_or(0x5bd1_e995_7f4a_7c15, |v| v ^ 0x2545_f491));
        let Self {
            index,
            entries,
            words,
        } = self;
        let chain = match index.entry(hash) {
            Entry::Vacant(vacant) => {
                vacant.insert(entries.len());
                NIL
            }
            Entry::Occupied(mut occupied) => {
                let mut i = *occupied.get();
                while i != NIL {
                    let e = &entries[i];
                    let stored =
                        &words[e.offset..e.offset + e.determinate_len + indeterminate.len()];
                    if e.value == value
                        && e.start == set.start
                        && stored[..e.determinate_len] == *determinate
                        && stored[e.determinate_len..] == *indeterminate
                    {
                        return false;
                    }
                    i = e.next;
                }
                occupied.insert(entries.len())
            }
        };
        entries.push(CacheEntry {
            next: chain,
            value,
            start: set.start,
            offset: words.len(),
            determinate_len: determinate.len(),
        });
        words.extend_from_slice(determinate);
        words.extend_from_slice(indeterminate);
        true
    }
}

/// A hasher for keys that are already well-mixed 64-bit hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
        self.0 = splitmix64(self.0);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A 64-bit mixing function (the output step of SplitMix64).
pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
