//! The flash journal under real nodes: three core nodes whose durable stores are
//! `FlashJournal`s on small RAM flashes (banks of 2 KiB, rewritten every 512 bytes, and
//! hosts that leave maintenance alone for stretches, so batches are owed to rewrites
//! too), with a lossy network, partitions (leader changes, truncations), snapshots taken
//! every few entries and sent in chunks, and crashes. The core's `MemStore` is fed the
//! same batches: after every drain and every maintenance step, the journal reopened from
//! its flash must hold exactly what the model held at the last point the node was told
//! was durable. At the end, boards that applied the same index hold the same state.
// A test: a failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};

use coracle::{
    ArrayLog, Config, EntryKind, HardState, Index, InstallSnapshot, LogStorage, MemStore, Message,
    Node, NodeId, Output, OwnedMessage, Role, SyncToken, Term,
};
use coracle_embedded::journal::{FlashJournal, Persisted, RamFlash, Step};

type Log = ArrayLog<16, 4, 16>;
type Journal = FlashJournal<RamFlash<4096>, 64>;
const SNAPSHOT_BYTES: usize = 40;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The state machine: the index applied last and a checksum of the commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct State {
    index: Index,
    sum: u64,
}

impl State {
    fn encode(&self) -> [u8; SNAPSHOT_BYTES] {
        let mut out = [0xA5; SNAPSHOT_BYTES];
        out[..8].copy_from_slice(&self.index.to_le_bytes());
        out[8..16].copy_from_slice(&self.sum.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Self {
        assert_eq!(bytes.len(), SNAPSHOT_BYTES);
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        Self {
            index: word(0),
            sum: word(8),
        }
    }
}

/// A board: its node, journal, model, state machine.
struct Board {
    node: Option<Node<Log>>,
    journal: Option<Journal>,
    /// Every batch performed.
    model: MemStore,
    /// The model as of the last point the node was told was durable.
    durable: MemStore,
    owed: Option<SyncToken>,
    state: State,
    /// Applied index -> checksum, for the safety check across boards.
    history: BTreeMap<Index, u64>,
    /// What the run exercised: batches owed to a rewrite, truncations and resets,
    /// snapshots restored from a leader's install.
    seen: Seen,
}

#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    owed: u64,
    truncations: u64,
    installs: u64,
}

/// What a memory log holds, comparable.
type Summary = (
    HardState,
    Index,
    Index,
    Option<Term>,
    Vec<(Index, Term, Vec<u8>)>,
    Option<Index>,
);

fn summary<S: LogStorage>(log: &S) -> Summary {
    (
        log.hard_state(),
        log.first_index(),
        log.last_index(),
        log.term(log.first_index() - 1),
        (log.first_index()..=log.last_index())
            .map(|i| {
                let e = log.entry(i).unwrap();
                (e.index, e.term, e.data.to_vec())
            })
            .collect(),
        log.snapshot_meta().map(|m| m.index),
    )
}

fn config(id: NodeId, applied: Index) -> Config {
    let mut c = Config::new(id, id * 101);
    c.keep_entries_behind_snapshot = 2;
    c.max_snapshot_chunk_bytes = 16;
    c.max_entries_per_message = 4;
    c.max_entry_bytes = 4;
    c.max_uncommitted_entries = 8;
    c.applied = applied;
    c
}

impl Board {
    fn new(id: NodeId, members: &[NodeId]) -> Self {
        let mut log = Log::new();
        let mut journal = Journal::open(RamFlash::new(), &mut log).unwrap();
        journal.set_rewrite_above(512);
        Board {
            node: Some(Node::new(config(id, 0), log, members).unwrap()),
            journal: Some(journal),
            model: MemStore::new(),
            durable: MemStore::new(),
            owed: None,
            state: State::default(),
            history: BTreeMap::new(),
            seen: Seen::default(),
        }
    }

    /// The journal reopened from its flash holds what the model held when the node
    /// was last told its writes were durable.
    fn check(&self, what: &str) {
        let journal = self.journal.as_ref().unwrap();
        let flash = journal.flash().clone();
        let mut log = Log::new();
        let reopened = Journal::open(flash, &mut log).unwrap();
        let mut model = Log::new();
        self.durable.recover(&mut model).unwrap();
        assert_eq!(summary(&log), summary(&model), "{what}");
        assert_eq!(
            reopened.snapshot().map(|(m, b)| (*m, b.to_vec())),
            self.durable.snapshot.clone(),
            "{what}: snapshot"
        );
    }

    /// A power cut: the node and what was not durable are gone; the board boots from
    /// its journal and restores its state machine from the snapshot.
    fn crash_and_restart(&mut self, id: NodeId, members: &[NodeId]) {
        self.node = None;
        let flash = self.journal.take().map(|j| j.into_flash()).unwrap();
        let mut log = Log::new();
        let mut journal = Journal::open(flash, &mut log).unwrap();
        journal.set_rewrite_above(512);
        self.state = journal
            .snapshot()
            .map_or(State::default(), |(_, b)| State::decode(b));
        self.model = self.durable.clone();
        self.owed = None;
        let node = Node::new(config(id, self.state.index), log, members).unwrap();
        self.node = Some(node);
        self.journal = Some(journal);
    }
}

/// Drains board `i`'s node; messages go to `mail`.
fn drain(
    boards: &mut [Board],
    i: usize,
    mail: &mut VecDeque<(NodeId, NodeId, OwnedMessage)>,
    snapshot_now: bool,
) {
    let id = i as NodeId + 1;
    let b = &mut boards[i];
    let (Some(node), Some(journal)) = (b.node.as_mut(), b.journal.as_mut()) else {
        return;
    };
    loop {
        let mut durable = None;
        while let Some(out) = node.poll_output() {
            match out {
                Output::Persist(persist) => {
                    let batch = persist.batch();
                    b.model.persist(&batch);
                    let cut = batch.truncate_from.is_some() || batch.reset.is_some();
                    b.seen.truncations += u64::from(cut);
                    match journal
                        .persist(&batch)
                        .expect("the journal takes the batch")
                    {
                        Persisted::Durable => durable = Some(batch.token),
                        Persisted::AfterRewrite => {
                            b.seen.owed += 1;
                            b.owed = Some(batch.token);
                        }
                    }
                }
                Output::Send { to, message } => {
                    mail.push_back((id, to, OwnedMessage::from(&message)));
                }
                Output::SendSnapshot {
                    to,
                    message,
                    max_len,
                } => {
                    let mut buf = vec![0; max_len];
                    let index = message.last_included_index;
                    if let Some((len, done)) =
                        journal.snapshot_chunk(index, message.offset, &mut buf)
                    {
                        let chunk = InstallSnapshot {
                            data: &buf[..len],
                            done,
                            ..message
                        };
                        mail.push_back((
                            id,
                            to,
                            OwnedMessage::from(&Message::InstallSnapshot(chunk)),
                        ));
                    }
                }
                Output::Apply(e) => {
                    if e.kind == EntryKind::Command {
                        b.state.sum = b.state.sum.rotate_left(7) ^ u64::from(e.data[0]);
                    }
                    b.state.index = e.index;
                    b.history.insert(e.index, b.state.sum);
                }
                Output::RestoreSnapshot { index, .. } => {
                    let (_, bytes) = journal.snapshot().expect("a kept snapshot");
                    b.state = State::decode(bytes);
                    assert_eq!(b.state.index, index);
                    b.seen.installs += 1;
                    b.history.insert(index, b.state.sum);
                }
                Output::Fetch { .. } => panic!("an ArrayLog never misses"),
                Output::StateChanged(_)
                | Output::ReadReady { .. }
                | Output::ReadFailed { .. }
                | Output::SnapshotNeeded => {}
            }
        }
        if let Some(token) = durable {
            if b.owed.is_none() {
                b.durable = b.model.clone();
            }
            node.persisted(token);
            continue;
        }
        break;
    }
    // A snapshot every few entries, as a board takes them.
    let kept = node.log().snapshot_meta().map_or(0, |m| m.index);
    if snapshot_now && b.state.index > kept {
        journal
            .save_taken(b.state.index, &b.state.encode())
            .unwrap();
        b.model.save_taken(b.state.index, b.state.encode().to_vec());
        node.snapshot_taken(b.state.index).unwrap();
    }
}

/// One maintenance step of board `i` (between turns), with the check after it.
fn maintain(boards: &mut [Board], i: usize) {
    let b = &mut boards[i];
    let (Some(node), Some(journal)) = (b.node.as_mut(), b.journal.as_mut()) else {
        return;
    };
    if let Step::Rewritten { .. } = journal.step(node.log()).expect("the live state fits") {
        b.durable = b.model.clone();
        if let Some(token) = b.owed.take() {
            node.persisted(token);
        }
    }
}

/// Runs a seed; returns what it exercised.
fn run(seed: u64) -> Seen {
    let members = [1, 2, 3];
    let mut rng = Rng(seed);
    let mut boards: Vec<Board> = members.iter().map(|&id| Board::new(id, &members)).collect();
    let mut mail = VecDeque::new();
    let mut isolated: Option<NodeId> = None;
    let mut rewrites_seen = 0;
    for tick in 0..3000u64 {
        if tick % 200 == 0 {
            isolated = rng.chance(50).then(|| rng.next() % 3 + 1);
        }
        if rng.chance(1) {
            let i = (rng.next() % 3) as usize;
            boards[i].crash_and_restart(i as NodeId + 1, &members);
            boards[i].check(&format!(
                "seed {seed} tick {tick}: board {} rebooted",
                i + 1
            ));
        }
        for b in boards.iter_mut() {
            let node = b.node.as_mut().unwrap();
            node.tick();
            if node.role() == Role::Leader && rng.chance(40) {
                let _ = node.propose(&[rng.next() as u8; 3]);
            }
        }
        for i in 0..boards.len() {
            drain(&mut boards, i, &mut mail, tick % 7 == 0);
            drain(&mut boards, i, &mut mail, false);
            boards[i].check(&format!("seed {seed} tick {tick}: board {} drained", i + 1));
            // Each board's host leaves its maintenance alone for a stretch now and
            // then: its bank fills, and batches are owed to the rewrite.
            if (tick / 150) % 4 != i as u64 {
                maintain(&mut boards, i);
            }
            drain(&mut boards, i, &mut mail, false);
            boards[i].check(&format!("seed {seed} tick {tick}: board {} stepped", i + 1));
        }
        // Deliver what was sent, dropping some, and what crosses the partition.
        let mut rounds = 0;
        while let Some((from, to, message)) = mail.pop_front() {
            rounds += 1;
            assert!(rounds < 100_000);
            if rng.chance(10) || isolated.is_some_and(|n| n == from || n == to) {
                continue;
            }
            let i = (to - 1) as usize;
            if let Some(node) = boards[i].node.as_mut() {
                node.step(from, message.as_message());
            }
            drain(&mut boards, i, &mut mail, false);
        }
        rewrites_seen = boards
            .iter()
            .map(|b| b.journal.as_ref().unwrap().rewrites())
            .sum::<u64>()
            .max(rewrites_seen);
    }
    assert!(
        rewrites_seen > 0,
        "seed {seed}: the journals rewrote their banks"
    );
    // State Machine Safety across the boards, snapshots restored included.
    for a in 0..3 {
        for b in a + 1..3 {
            for (index, sum) in &boards[a].history {
                if let Some(other) = boards[b].history.get(index) {
                    assert_eq!(
                        sum,
                        other,
                        "seed {seed}: boards {} and {} at {index}",
                        a + 1,
                        b + 1
                    );
                }
            }
        }
    }
    let applied: Vec<Index> = boards.iter().map(|b| b.state.index).collect();
    assert!(
        applied.iter().all(|&i| i > 50),
        "seed {seed}: progress {applied:?}"
    );
    boards.iter().fold(Seen::default(), |a, b| Seen {
        owed: a.owed + b.seen.owed,
        truncations: a.truncations + b.seen.truncations,
        installs: a.installs + b.seen.installs,
    })
}

#[test]
fn journals_under_real_nodes_hold_what_the_model_holds_at_every_step() {
    let mut seen = Seen::default();
    for seed in [1, 2, 3, 4] {
        let s = run(seed);
        seen.owed += s.owed;
        seen.truncations += s.truncations;
        seen.installs += s.installs;
    }
    eprintln!("{seen:?}");
    assert!(
        seen.truncations > 0 && seen.installs > 0 && seen.owed > 0,
        "{seen:?}"
    );
}
