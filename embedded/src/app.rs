//! The application every firmware runs (feature `firmware`): the counter
//! table, the UDP send-counter mark, a snapshot and a compaction of the
//! log every so many applied entries, the leader's periodic proposals, and
//! the defmt log lines `cargo xtask qemu-cluster` reads (`apply`, `state`,
//! `installed snapshot`, `compacted`, `status`).
//!
//! A firmware keeps only what is its board's: it implements [`BoardHooks`]
//! (what a role change shows, how the board stops), declares a `static`
//! [`Installed`] and an install hook for its log that fills it, and hands
//! an [`App`] to `coracle_udp::embassy::run_node`.

use core::cell::RefCell;

use coracle::{NodeId, Output, Role, SnapshotMeta};
use coracle_udp::event_loop::Control;
use coracle_udp::node::{Application, UdpNode};
use critical_section::Mutex;
use defmt::{info, warn};
use embassy_time::{Duration, Instant, Timer};
use embedded_storage::nor_flash::NorFlash;

use crate::compaction::snapshot_and_compact;
use crate::counters::{Add, CounterTable};
use crate::journal::{FlashLog, MarkStore};

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

/// The table of the snapshot the log installed last (from a leader), until
/// `Output::RestoreSnapshot` takes it: the application cannot reach the log
/// when that output arrives. A firmware declares one `static` and fills it
/// from its log's install hook ([`Installed::keep`]).
pub struct Installed<const COUNTERS: usize> {
    table: Mutex<RefCell<Option<CounterTable<COUNTERS>>>>,
}

impl<const COUNTERS: usize> Installed<COUNTERS> {
    /// Empty.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            table: Mutex::new(RefCell::new(None)),
        }
    }

    /// For the log's install hook: keeps the table the snapshot `data` at
    /// `meta` holds (nothing if it does not decode to a table applied
    /// through `meta.index`).
    pub fn keep(&self, meta: &SnapshotMeta, data: &[u8]) {
        let table = CounterTable::decode(data)
            .ok()
            .filter(|t| t.applied() == meta.index);
        critical_section::with(|cs| *self.table.borrow(cs).borrow_mut() = table);
    }

    /// Takes the kept table.
    pub fn take(&self) -> Option<CounterTable<COUNTERS>> {
        critical_section::with(|cs| self.table.borrow(cs).take())
    }
}

impl<const COUNTERS: usize> Default for Installed<COUNTERS> {
    fn default() -> Self {
        Self::new()
    }
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

/// The board's application: the counter table, the send-counter store,
/// and the periodic proposals and status lines. `M` is the flash of the
/// send-counter marks, `H` the board's hooks.
pub struct App<M: NorFlash, H: BoardHooks, const COUNTERS: usize> {
    id: NodeId,
    table: CounterTable<COUNTERS>,
    /// The node asked for a snapshot (its log is full).
    snapshot_needed: bool,
    marks: MarkStore<M>,
    installed: &'static Installed<COUNTERS>,
    settings: Settings,
    hooks: H,
    next_tick: Instant,
    ticks: u32,
}

impl<M: NorFlash, H: BoardHooks, const COUNTERS: usize> App<M, H, COUNTERS> {
    /// The application of node `id`, from its `table` (restored from the
    /// journal's snapshot), its send-counter `marks`, and the `installed`
    /// snapshots its log's install hook keeps. Its first tick is now.
    pub fn new(
        id: NodeId,
        table: CounterTable<COUNTERS>,
        marks: MarkStore<M>,
        installed: &'static Installed<COUNTERS>,
        settings: Settings,
        hooks: H,
    ) -> Self {
        Self {
            id,
            table,
            snapshot_needed: false,
            marks,
            installed,
            settings,
            hooks,
            next_tick: Instant::now(),
            ticks: 0,
        }
    }

    /// Snapshots the table and compacts the log through its applied index,
    /// every [`Settings::compact_every`] entries, or sooner when the log or
    /// its flash bank fills.
    fn compact<
        F: NorFlash,
        const CAP: usize,
        const DATA: usize,
        const SNAP: usize,
        const PEERS: usize,
        const MTU: usize,
        const ENTRIES: usize,
    >(
        &mut self,
        udp: &mut UdpNode<FlashLog<F, CAP, DATA, SNAP>, PEERS, MTU, ENTRIES>,
    ) {
        let needed = &mut self.snapshot_needed;
        let every = self.settings.compact_every;
        match snapshot_and_compact(udp.node_mut(), &self.table, every, needed) {
            Ok(Some(c)) => info!(
                "compacted through={=u64} first={=u64} last={=u64} bank={=usize} generation={=u64} flash_used={=usize} digest={=u32:08x}",
                c.through,
                c.first,
                c.last,
                c.bank.0,
                c.bank.1,
                c.flash_used,
                self.table.digest()
            ),
            Ok(None) => {}
            Err(e) => warn!("compaction failed: {}", defmt::Debug2Format(&e)),
        }
    }
}

impl<M: NorFlash, H: BoardHooks, const COUNTERS: usize> Application for App<M, H, COUNTERS> {
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
                match self.installed.take() {
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
            _ => {}
        }
    }

    fn persist_counter(&mut self, mark: u64) -> bool {
        self.marks.store(mark).is_ok()
    }
}

impl<
        M: NorFlash,
        H: BoardHooks,
        F: NorFlash,
        const COUNTERS: usize,
        const CAP: usize,
        const DATA: usize,
        const SNAP: usize,
        const PEERS: usize,
        const MTU: usize,
        const ENTRIES: usize,
    > Control<UdpNode<FlashLog<F, CAP, DATA, SNAP>, PEERS, MTU, ENTRIES>> for App<M, H, COUNTERS>
{
    type Command = ();

    async fn next_command(&mut self) -> Option<()> {
        // An absolute deadline: cancel-safe (the loop drops this future
        // whenever a datagram or a timer comes first).
        Timer::at(self.next_tick).await;
        self.next_tick += TICK;
        Some(())
    }

    fn command(
        &mut self,
        udp: &mut UdpNode<FlashLog<F, CAP, DATA, SNAP>, PEERS, MTU, ENTRIES>,
        (): (),
    ) {
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
}
