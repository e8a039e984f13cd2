//! The search for a linearization of one key's operations.
//!
//! This is the algorithm of Wing & Gong as improved by Lowe ("Testing for
//! linearizability", 2017) and used by porcupine: the history becomes a list of call and
//! return events sorted by time; a depth-first search repeatedly picks an operation whose
//! call comes before the first remaining return, applies it to the model, and removes its
//! two events from the list ("lifts" it); reaching a return whose operation is not yet
//! linearized means backtracking. A cache of the configurations already explored (the set
//! of linearized operations, plus the model's value) keeps the search from exploring the
//! same configuration twice.
//!
//! Indeterminate operations (the client gave up) have no return event: they never force
//! a backtrack, and may take effect at any time after their invocation, or never. Once no
//! return event remains, every determinate operation is placed and the rest can be left
//! out (taking effect "after the end"), so the history is linearizable. Indeterminate
//! reads are left out from the start. They are what makes a history hard: each one that
//! may or may not have taken effect can double the configurations, and a long outage
//! leaves dozens of them. Four things keep the search small (together they took the
//! hardest simulator histories from more than 100 million steps to about ten thousand):
//!
//! - **Unobserved values** ([`Abstraction`]): values that no operation reads or compares
//!   with are all replaced by one stand-in, so the writes of such values are alike.
//! - **Twins**: of several indeterminate operations that do the same thing, only the
//!   earliest unused one is tried.
//! - **Dominance** ([`Cache`]): a configuration whose indeterminate operations are a
//!   superset of those of an explored configuration with the same determinate operations
//!   and value is not explored: anything it can do, the other could.
//! - **Order** ([`Scan`]): determinate operations are tried before indeterminate ones,
//!   so configurations with few indeterminate operations come first and dominate the
//!   rest; an indeterminate operation is never directly followed by a write that erases
//!   its effect (a put or a delete), which the order without it dominates.
//!
//! The search stays exhaustive: a history is reported not linearizable only when no
//! order exists, and `tests.rs` compares the verdicts with a search of every order on
//! thousands of small random histories.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use super::history::{Key, Op, Operation, Output, Value};
use super::report::{Candidate, Report, Verdict};
use super::Budget;

/// The end of a linked list, or "no such entry".
const NIL: usize = usize::MAX;
/// The head sentinel of the list of determinate events is entry 0.
const HEAD: usize = 0;
/// The head sentinel of the list of indeterminate calls is entry 1.
const INDETERMINATE_HEAD: usize = 1;
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
    let abstraction = Abstraction::of(&kept);
    let mut last_twin: HashMap<Op, usize> = HashMap::new();
    let ops: Vec<LocalOp> = kept
        .into_iter()
        .enumerate()
        .map(|(i, operation)| {
            let expected = operation.output();
            let model = abstraction.op(operation.op);
            let twin = match expected {
                Some(_) => NIL,
                None => last_twin.insert(model, i).unwrap_or(NIL),
            };
            LocalOp {
                operation,
                model,
                expected,
                // Only determinate operations take part in the hash: the cache compares
                // the sets of indeterminate operations itself.
                zobrist: match expected {
                    Some(_) => splitmix64(0x1234_5678_9abc_def0 ^ i as u64),
                    None => 0,
                },
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

/// Values that no operation reads or compares with are told apart by nothing: the
/// search writes one stand-in value, [`unobserved`](Self::unobserved), in their place.
///
/// A value is observed if a completed read returned it or a compare-and-set expects it.
/// Replacing every other written value by the stand-in (which is itself observed by
/// nothing) changes no output of any operation in any order: a read returns an observed
/// value or `None` exactly when it did before, and a compare-and-set compares with an
/// observed value or `None`. So the history is linearizable exactly when its abstraction
/// is, and writes of values nobody saw (the indeterminate puts of a long outage, most of
/// them) become identical operations, of which the search only tries the first unused
/// one.
struct Abstraction {
    observed: HashSet<Value>,
    unobserved: Value,
}

impl Abstraction {
    fn of(operations: &[Operation]) -> Self {
        let mut observed = HashSet::new();
        for o in operations {
            match (o.op, o.output()) {
                (Op::Get { .. }, Some(Output::Read(Some(v)))) => {
                    observed.insert(v);
                }
                (
                    Op::CompareAndSet {
                        expected: Some(v), ..
                    },
                    _,
                ) => {
                    observed.insert(v);
                }
                _ => {}
            }
        }
        // There are fewer observed values than `u64`s: this ends.
        let unobserved = (0..=Value::MAX)
            .rev()
            .find(|v| !observed.contains(v))
            .unwrap_or(Value::MAX);
        Self {
            observed,
            unobserved,
        }
    }

    fn value(&self, v: Value) -> Value {
        if self.observed.contains(&v) {
            v
        } else {
            self.unobserved
        }
    }

    /// The operation as the search applies it.
    fn op(&self, op: Op) -> Op {
        match op {
            Op::Put { key, value } => Op::Put {
                key,
                value: self.value(value),
            },
            Op::CompareAndSet { key, expected, new } => Op::CompareAndSet {
                key,
                expected,
                new: new.map(|v| self.value(v)),
            },
            Op::Get { .. } | Op::Delete { .. } => op,
        }
    }
}

/// An operation of the key being checked.
struct LocalOp {
    operation: Operation,
    /// The operation as the search applies it (see [`Abstraction`]).
    model: Op,
    /// The recorded output; `None` if indeterminate (or pending).
    expected: Option<Output>,
    /// A random value for a determinate operation, 0 for an indeterminate one; the hash
    /// of a set of operations is the xor of theirs.
    zobrist: u64,
    /// For an indeterminate operation, the previous indeterminate operation (in
    /// invocation order) that does exactly the same thing (in the abstraction), or `NIL`.
    /// Such twins are interchangeable once both are invoked, so only the first unused one
    /// is tried.
    twin: usize,
}

impl LocalOp {
    /// Whether taking effect sets the value whatever it was (a put or a delete).
    fn is_blind_write(&self) -> bool {
        matches!(self.model, Op::Put { .. } | Op::Delete { .. })
    }

    /// The value after taking effect on `value`, or `None` if it cannot take effect here
    /// (wrong output), or need not (indeterminate and changes nothing).
    fn step(&self, value: Option<Value>) -> Option<Option<Value>> {
        let (after, output) = self.model.apply(value);
        match self.expected {
            Some(expected) => (expected == output).then_some(after),
            None => (after != value).then_some(after),
        }
    }
}

/// A call or return event; events are stored in time order after the two head sentinels.
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

/// Where the scan of the current level of the search is: first the determinate calls up
/// to the first remaining return event, then the indeterminate calls before that return.
///
/// Trying determinate operations first means the search reaches configurations with few
/// indeterminate operations before those with many, and a configuration with fewer
/// dominates (see [`Cache`]) the ones that only add indeterminate operations to it.
#[derive(Clone, Copy)]
enum Scan {
    /// The determinate list, from this entry on.
    Determinate(usize),
    /// The indeterminate list, from `entry` on, up to the return event `limit`.
    Indeterminate { entry: usize, limit: usize },
}

/// An operation the search has linearized, to undo on backtracking.
struct Frame {
    /// The entry of its call event.
    call: usize,
    /// The value before it.
    before: Option<Value>,
    /// `NIL` if it was found in the determinate list, else the limit of that scan.
    limit: usize,
}

struct Search<'a> {
    ops: &'a [LocalOp],
    /// Entries 0 and 1 are the heads of the determinate list (calls and returns of
    /// determinate operations) and of the indeterminate list (calls of indeterminate
    /// ones); entries 2.. are the events in time order.
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
        let sentinel = Event {
            op: NIL,
            is_call: false,
            ret: NIL,
        };
        let mut events = vec![sentinel; 2];
        events.reserve(order.len());
        let mut next = vec![NIL; 2 + order.len()];
        let mut prev = vec![NIL; 2 + order.len()];
        let mut last = [HEAD, INDETERMINATE_HEAD];
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
            let list = usize::from(ops[op].expected.is_none());
            next[last[list]] = entry;
            prev[entry] = last[list];
            last[list] = entry;
        }
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

    /// Removes the call event `call` and its return from their list.
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
        let mut stack: Vec<Frame> = Vec::new();
        let mut cache = Cache::default();
        let mut best: Option<Snapshot> = None;
        let mut steps = 0u64;
        let mut scan = Scan::Determinate(self.next[HEAD]);
        loop {
            if budget.max_steps.is_some_and(|max| steps >= max)
                || (steps.is_multiple_of(CLOCK_EVERY)
                    && budget.deadline.is_some_and(|d| Instant::now() >= d))
            {
                return Run::Exhausted;
            }
            steps += 1;
            let (entry, limit) = match scan {
                // No return event left: only indeterminate operations remain.
                Scan::Determinate(NIL) => return Run::Linearizable,
                Scan::Determinate(entry) if !self.events[entry].is_call => {
                    scan = Scan::Indeterminate {
                        entry: self.next[INDETERMINATE_HEAD],
                        limit: entry,
                    };
                    continue;
                }
                Scan::Determinate(entry) => (entry, NIL),
                Scan::Indeterminate { entry, limit } if entry == NIL || entry > limit => {
                    // Nothing fits before the return event `limit`, whose operation
                    // must have been linearized already: backtrack.
                    if best.as_ref().is_none_or(|b| limit > b.position) {
                        if let Some(snapshot) = self.snapshot(limit, &stack, value) {
                            best = Some(snapshot);
                        }
                    }
                    let Some(frame) = stack.pop() else {
                        return match best {
                            Some(snapshot) => Run::Stuck(snapshot),
                            // Not expected: the furthest return event reached gives a
                            // snapshot. Were it to happen, no verdict beats a wrong one.
                            None => Run::Exhausted,
                        };
                    };
                    let op = self.events[frame.call].op;
                    linearized.remove(op);
                    hash ^= self.ops[op].zobrist;
                    value = frame.before;
                    self.unlift(frame.call);
                    let entry = self.next[frame.call];
                    scan = match frame.limit {
                        NIL => Scan::Determinate(entry),
                        limit => Scan::Indeterminate { entry, limit },
                    };
                    continue;
                }
                Scan::Indeterminate { entry, limit } => (entry, limit),
            };
            let op_index = self.events[entry].op;
            let op = &self.ops[op_index];
            let twin_unused = op.twin != NIL && !linearized.contains(op.twin);
            // A blind write right after an indeterminate operation would erase its
            // effect: that order is dominated by the one without it (see `Cache`).
            let erases = op.is_blind_write()
                && stack
                    .last()
                    .is_some_and(|top| self.ops[self.events[top.call].op].expected.is_none());
            if let Some(after) = op.step(value).filter(|_| !twin_unused && !erases) {
                linearized.insert(op_index);
                hash ^= op.zobrist;
                if cache.insert(&linearized, hash, after) {
                    stack.push(Frame {
                        call: entry,
                        before: value,
                        limit,
                    });
                    value = after;
                    self.lift(entry);
                    scan = Scan::Determinate(self.next[HEAD]);
                    continue;
                }
                linearized.remove(op_index);
                hash ^= op.zobrist;
            }
            let entry = self.next[entry];
            scan = match limit {
                NIL => Scan::Determinate(entry),
                limit => Scan::Indeterminate { entry, limit },
            };
        }
    }

    /// Describes where the search is stuck: before the return event `position`, after
    /// the operations of `stack`, with the value `value`.
    ///
    /// The search prunes orders that others dominate, so a determinate operation that
    /// fits here may not have been tried here (it was, elsewhere): the prefix is extended
    /// by such operations as long as one fits, so that every determinate candidate left
    /// has the wrong output. `None` if that lets the operation of `position` itself take
    /// effect: the search gets past `position` from there, and a report belongs further
    /// on.
    fn snapshot(&self, position: usize, stack: &[Frame], value: Option<Value>) -> Option<Snapshot> {
        let mut prefix: Vec<usize> = stack
            .iter()
            .map(|frame| self.events[frame.call].op)
            .collect();
        let mut value = value;
        // The calls before `position` in both lists, in time order.
        let mut calls = Vec::new();
        for head in [HEAD, INDETERMINATE_HEAD] {
            let mut entry = self.next[head];
            while entry != NIL && entry < position {
                calls.push(entry);
                entry = self.next[entry];
            }
        }
        calls.sort_unstable();
        let mut candidates: Vec<usize> = calls.iter().map(|&e| self.events[e].op).collect();
        loop {
            let fitting = candidates.iter().enumerate().find_map(|(i, &op)| {
                let op = &self.ops[op];
                op.expected
                    .is_some()
                    .then(|| op.step(value))
                    .flatten()
                    .map(|after| (i, after))
            });
            let Some((i, after)) = fitting else { break };
            let op = candidates.remove(i);
            if op == self.events[position].op {
                return None;
            }
            value = after;
            prefix.push(op);
        }
        Some(Snapshot {
            position,
            prefix,
            value,
            candidates,
        })
    }

    fn report(&self, key: Key, snapshot: Snapshot) -> Report {
        let blocked = self.ops[self.events[snapshot.position].op].operation;
        let prefix: Vec<Operation> = snapshot
            .prefix
            .iter()
            .map(|&i| self.ops[i].operation)
            .collect();
        // The search ran on the abstraction; the report shows the values written.
        let value = prefix
            .iter()
            .fold(None, |value, operation| operation.op.apply(value).0);
        let candidates = snapshot
            .candidates
            .iter()
            .map(|&i| {
                let op = &self.ops[i];
                let (after, output) = op.operation.op.apply(value);
                let verdict = match (op.expected, op.step(snapshot.value)) {
                    (Some(_), fits) => {
                        debug_assert!(fits.is_none(), "a fitting determinate candidate");
                        Verdict::WrongOutput { model: output }
                    }
                    (None, None) if after == value => Verdict::NoEffect,
                    (None, None) => Verdict::Unobserved,
                    (None, Some(_)) => Verdict::DeadEnd,
                };
                Candidate {
                    operation: op.operation,
                    verdict,
                }
            })
            .collect();
        Report {
            key,
            prefix,
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

/// The configurations (set of linearized operations, value) already explored, kept so
/// that the search does not explore a configuration, or one it dominates, twice.
///
/// Configuration `A` dominates `B` if they hold the same value and the same determinate
/// operations, and `A`'s indeterminate operations are a subset of `B`'s: an indeterminate
/// operation has no return event and need never be placed, so every move from `B` (and
/// every linearization that completes it) is open to `A` too. Such a `B` is pruned: if
/// `A` was explored and failed, so does `B`; if `A` is still being explored (`B` is below
/// it), the way from `A` to `B` only spent indeterminate operations, and any completion
/// from `B` is one from `A` without them. Without this, every subset of the
/// indeterminate operations that leaves the same value makes a configuration of its
/// own, and the search is exponential in them.
///
/// The configurations are grouped by (determinate set, value); each group keeps the
/// minimal indeterminate sets seen (an antichain): a set dominated by a stored one is
/// refused, and stored sets that a new one dominates are dropped.
#[derive(Default)]
struct Cache {
    /// Hash of a group -> its latest entry in `groups` (a chain by `next`).
    index: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    groups: Vec<Group>,
    /// The stored determinate words of every group, one after the other.
    words: Vec<u64>,
}

struct Group {
    next: usize,
    value: Option<Value>,
    start: usize,
    offset: usize,
    determinate_len: usize,
    /// The minimal indeterminate sets, one after the other (each as many words as the
    /// indeterminate part of [`Linearized`]).
    minimal: Vec<u64>,
}

impl Cache {
    /// Adds a configuration; returns `false` if it, or a configuration that dominates it,
    /// was already there. `set_hash` must be the xor of the Zobrist values of the
    /// determinate operations in `set`.
    fn insert(&mut self, set: &Linearized, set_hash: u64, value: Option<Value>) -> bool {
        let (determinate, indeterminate) = set.key();
        let hash = set_hash ^ splitmix64(value.map_or(0x5bd1_e995_7f4a_7c15, |v| v ^ 0x2545_f491));
        let Self {
            index,
            groups,
            words,
        } = self;
        let chain = match index.entry(hash) {
            Entry::Vacant(vacant) => {
                vacant.insert(groups.len());
                NIL
            }
            Entry::Occupied(mut occupied) => {
                let mut i = *occupied.get();
                while i != NIL {
                    let g = &mut groups[i];
                    if g.value == value
                        && g.start == set.start
                        && words[g.offset..g.offset + g.determinate_len] == *determinate
                    {
                        return g.insert_minimal(indeterminate);
                    }
                    i = g.next;
                }
                occupied.insert(groups.len())
            }
        };
        groups.push(Group {
            next: chain,
            value,
            start: set.start,
            offset: words.len(),
            determinate_len: determinate.len(),
            minimal: indeterminate.to_vec(),
        });
        words.extend_from_slice(determinate);
        true
    }
}

impl Group {
    /// Adds `set` to the minimal sets unless a stored one is a subset of it.
    fn insert_minimal(&mut self, set: &[u64]) -> bool {
        let stride = set.len();
        if stride == 0 {
            return false;
        }
        let subset =
            |small: &[u64], large: &[u64]| small.iter().zip(large).all(|(s, l)| s & !l == 0);
        if self
            .minimal
            .chunks_exact(stride)
            .any(|stored| subset(stored, set))
        {
            return false;
        }
        let mut kept = 0;
        for i in 0..self.minimal.len() / stride {
            let range = i * stride..(i + 1) * stride;
            if !subset(set, &self.minimal[range.clone()]) {
                self.minimal.copy_within(range, kept * stride);
                kept += 1;
            }
        }
        self.minimal.truncate(kept * stride);
        self.minimal.extend_from_slice(set);
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
