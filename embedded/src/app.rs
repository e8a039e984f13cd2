//! The application every firmware runs (feature `firmware`): the counter
//! table, the flash journal that is the node's durable store, the UDP
//! send-counter mark, a snapshot every so many applied entries, the
//! journal's maintenance (rewrites and erases, one step per turn of the
//! loop), the leader's periodic proposals, and the defmt log lines
//! `cargo xtask qemu-cluster` reads (`apply`, `state`, `installed snapshot`,
//! `compacted`, `erase start`, `erase done`, `rewritten`, `status`).
//!
//! A firmware keeps only what is its board's: it implements [`BoardHooks`]
//! (what a role change shows, how the board stops), opens its journal and
//! mark store, and hands an [`App`] to `coracle_udp::embassy::run_node`.

use coracle::{Batch, LogStorage, NodeId, Output, Role, SyncToken};
use coracle_udp::event_loop::Control;
use coracle_udp::node::{Application, Completion, UdpNode};
use defmt::{error, info, warn};
use embassy_time::{Duration, Instant, Timer};
use embedded_storage::nor_flash::NorFlash;

use crate::compaction::snapshot_and_compact;
use crate::counters::{Add, CounterTable};
use crate::journal::{FlashJournal, JournalFlash, MarkStore, Persisted, Step};

/// The period of the application's own tick.
const TICK: Duration = Duration::from_millis(100);
/// Every this many ticks (500 ms): a compaction check, a proposal from the
/// leader, and a `status` line.
const STATUS_EVERY: u32 = 5;

/// What differs between boards in the application.
pub trait BoardHooks {
    /// The node's role changed (an `Output::StateChanged`); called before
    /// the `state` line. A board with a leader LED sets it here.
    fn role_changed(&mut self, role: Role) {
        let _ = role;
    }

    /// Stops the board with a message `why` (the snapshot to restore is
    /// missing).
    fn halt(&mut self, why: &str) -> !;
}

/// How often a board compacts and how far its leader runs ahead.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// A snapshot and a compaction every this many applied entries.
    pub compact_every: u64,
    /// The leader stops proposing while this many entries are uncommitted
    /// (followers away): room stays for theirs.
    pub uncommitted: u64,
}

/// The name of `role` in the log lines.
#[must_use]
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "precandidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

/// The board's application: the counter table, the flash journal (on `F`)
/// and the send-counter store (`M`), and the periodic proposals and status
/// lines. `H` is the board's hooks; snapshots of the table take at most
/// `SNAP` bytes.
pub struct App<
    F: JournalFlash,
    M: NorFlash,
    H: BoardHooks,
    const COUNTERS: usize,
    const SNAP: usize,
> {
    id: NodeId,
    table: CounterTable<COUNTERS>,
    /// The node asked for a snapshot (its log is full).
    snapshot_needed: bool,
    journal: FlashJournal<F, SNAP>,
    marks: MarkStore<M>,
    settings: Settings,
    hooks: H,
    next_tick: Instant,
    ticks: u32,
    /// The latest batch the journal owes (durable with its next rewrite).
    owed: Option<SyncToken>,
    /// The erase under way: when it started, and datagrams sent by then.
    erase: Option<(Instant, u64)>,
}

impl<F: JournalFlash, M: NorFlash, H: BoardHooks, const COUNTERS: usize, const SNAP: usize>
    App<F, M, H, COUNTERS, SNAP>
{
    /// The application of node `id`, from its `table` (restored from the
    /// journal's snapshot), its `journal` and its send-counter `marks`. Its
    /// first tick is now.
    pub fn new(
        id: NodeId,
        table: CounterTable<COUNTERS>,
        journal: FlashJournal<F, SNAP>,
        marks: MarkStore<M>,
        settings: Settings,
        hooks: H,
    ) -> Self {
        Self {
            id,
            table,
            snapshot_needed: false,
            journal,
            marks,
            settings,
            hooks,
            next_tick: Instant::now(),
            ticks: 0,
            owed: None,
            erase: None,
        }
    }

    /// Snapshots the table and compacts the log through its applied index,
    /// every [`Settings::compact_every`] entries, or sooner when the log is
    /// full.
    fn compact<S: LogStorage, const PEERS: usize, const MTU: usize, const ENTRIES: usize>(
        &mut self,
        udp: &mut UdpNode<S, PEERS, MTU, ENTRIES>,
    ) {
        let needed = &mut self.snapshot_needed;
        let every = self.settings.compact_every;
        let journal = &mut self.journal;
        match snapshot_and_compact(udp.node_mut(), journal, &self.table, every, needed) {
            Ok(Some(c)) => info!(
                "compacted through={=u64} first={=u64} last={=u64} bank={=usize} generation={=u64} flash_used={=usize} digest={=u32:08x}",
                c.through,
                c.first,
                c.last,
                journal.bank().0,
                journal.bank().1,
                journal.used(),
                self.table.digest()
            ),
            Ok(None) => {}
            Err(e) => warn!("compaction failed: {}", defmt::Debug2Format(&e)),
        }
    }
}

impl<F: JournalFlash, M: NorFlash, H: BoardHooks, const COUNTERS: usize, const SNAP: usize>
    Application for App<F, M, H, COUNTERS, SNAP>
{
    fn persist(&mut self, batch: &Batch<'_>) -> Completion {
        match self.journal.persist(batch) {
            Ok(Persisted::Durable) => Completion::Now,
            Ok(Persisted::AfterRewrite) => {
                if self.owed.is_none() {
                    warn!("journal bank full: writes wait for the rewrite");
                }
                self.owed = Some(batch.token);
                Completion::Later
            }
            Err(e) => {
                error!("journal write failed: {}", defmt::Debug2Format(&e));
                Completion::Failed
            }
        }
    }

    fn snapshot_chunk(
        &mut self,
        index: coracle::Index,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<(usize, bool)> {
        self.journal.snapshot_chunk(index, offset, buf)
    }

    fn output(&mut self, output: Output<'_>) {
        match output {
            Output::Apply(entry) => {
                let refused = self.table.apply(&entry).is_err();
                info!(
                    "apply index={=u64} term={=u64} digest={=u32:08x} commands={=u64} refused={=bool}",
                    entry.index,
                    entry.term,
                    self.table.digest(),
                    self.table.commands(),
                    refused
                );
            }
            Output::StateChanged(s) => {
                self.hooks.role_changed(s.role);
                info!(
                    "state role={=str} term={=u64} leader={=u64}",
                    role_name(s.role),
                    s.term,
                    s.leader.unwrap_or(0)
                );
            }
            Output::RestoreSnapshot { index, term } => {
                let table = self
                    .journal
                    .snapshot()
                    .and_then(|(_, data)| CounterTable::decode(data).ok());
                match table {
                    Some(table) if table.applied() == index => self.table = table,
                    _ => self.hooks.halt("the snapshot to restore is missing"),
                }
                info!(
                    "installed snapshot index={=u64} term={=u64} digest={=u32:08x} commands={=u64}",
                    index,
                    term,
                    self.table.digest(),
                    self.table.commands()
                );
            }
            Output::SnapshotNeeded => {
                warn!("log full: snapshot needed");
                self.snapshot_needed = true;
            }
            // No reads are served here; the other kinds never reach `output`.
            _ => {}
        }
    }

    fn persist_counter(&mut self, mark: u64) -> bool {
        self.marks.store(mark).is_ok()
    }
}

impl<
        F: JournalFlash,
        M: NorFlash,
        H: BoardHooks,
        S: LogStorage,
        const COUNTERS: usize,
        const SNAP: usize,
        const PEERS: usize,
        const MTU: usize,
        const ENTRIES: usize,
    > Control<UdpNode<S, PEERS, MTU, ENTRIES>> for App<F, M, H, COUNTERS, SNAP>
{
    type Command = ();

    async fn next_command(&mut self) -> Option<()> {
        // An absolute deadline: cancel-safe (the loop drops this future
        // whenever a datagram or a timer comes first).
        Timer::at(self.next_tick).await;
        self.next_tick += TICK;
        Some(())
    }

    fn command(&mut self, udp: &mut UdpNode<S, PEERS, MTU, ENTRIES>, (): ()) {
        self.ticks = self.ticks.wrapping_add(1);
        if !self.ticks.is_multiple_of(STATUS_EVERY) {
            return;
        }
        self.compact(udp);
        let node = udp.node_mut();
        if node.role() == Role::Leader
            && node.last_index() < node.commit_index() + self.settings.uncommitted
        {
            let add = Add {
                counter: self.id as u8,
                delta: 1,
            };
            if let Err(e) = node.propose(&add.encode()) {
                warn!("propose failed: {}", defmt::Debug2Format(&e));
            }
        }
        let node = udp.node();
        info!(
            "status role={=str} term={=u64} leader={=u64} commit={=u64} applied={=u64} last={=u64} digest={=u32:08x} sent={=u64} dropped={=u64}",
            role_name(node.role()),
            node.term(),
            node.leader().unwrap_or(0),
            node.commit_index(),
            self.table.applied(),
            node.last_index(),
            self.table.digest(),
            udp.link().counters().sent,
            udp.link().drops().total(),
        );
    }

    /// One step of the journal's maintenance per turn of the loop, with
    /// `erase start` / `erase done` lines around each erase of a bank (the
    /// datagrams the board sent meanwhile show its loop kept running).
    fn maintain(&mut self, udp: &mut UdpNode<S, PEERS, MTU, ENTRIES>) -> bool {
        if !self.journal.pending() {
            return false;
        }
        let sent = udp.link().counters().sent;
        let node = udp.node();
        let (role, term) = (role_name(node.role()), node.term());
        let before = Instant::now();
        match self.journal.step(node.log()) {
            Ok(Step::Idle) => {}
            Ok(Step::Erasing { bank, unit, units }) if unit == 0 => {
                self.erase = Some((before, sent));
                info!(
                    "erase start bank={=usize} units={=usize} role={=str} term={=u64} sent={=u64}",
                    bank, units, role, term, sent
                );
            }
            Ok(Step::Erasing { .. } | Step::Waiting) => {}
            Ok(Step::Erased { bank }) => {
                let (started, sent_before) = self.erase.take().unwrap_or((before, sent));
                info!(
                    "erase done bank={=usize} ms={=u64} role={=str} term={=u64} sent={=u64} sent_during={=u64}",
                    bank,
                    started.elapsed().as_millis(),
                    role,
                    term,
                    sent,
                    sent - sent_before
                );
            }
            Ok(Step::Rewritten {
                bank,
                generation,
                used,
            }) => {
                info!(
                    "rewritten bank={=usize} generation={=u64} flash_used={=usize}",
                    bank, generation, used
                );
                if let Some(token) = self.owed.take() {
                    udp.persisted(token);
                }
            }
            Err(e) => {
                warn!("journal maintenance failed: {}", defmt::Debug2Format(&e));
                if self.owed.take().is_some() {
                    error!("the writes the journal owed are lost: the node stops acknowledging");
                    udp.persist_failed();
                }
            }
        }
        self.journal.pending()
    }
}
