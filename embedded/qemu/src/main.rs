//! Coracle on a QEMU `mps2-an385` board: a Raft node over authenticated
//! UDP on the board's LAN9118, replicating a table of counters, with its
//! log in (semihosting-file) flash. One image serves every board: the node
//! id, the address and the peers come from the MAC QEMU gives the board
//! (see `coracle_embedded::board`). Logs go out as defmt over semihosting.
//!
//! The leader proposes `counter[its id] += 1` every 500 ms, for as long as
//! the board runs: every [`COMPACT_EVERY`] applied entries (or when the log
//! fills) a board snapshots its counter table into the journal and compacts
//! the log (a `compacted` line), so the RAM log never fills; once
//! [`REWRITE_ABOVE`] bytes were appended, the journal rewrites its live
//! state into its other bank and erases the old one, one step per turn of
//! the node's loop (`rewritten`, `erase start`, `erase done` lines: the
//! flash emulates a slow erase, and the node's timers keep running). A
//! board that falls behind the leader's snapshot gets it (InstallSnapshot)
//! and restores its table from it (an `installed snapshot` line). Every
//! board logs each entry it applies with the digest of its table, and a
//! status line every 500 ms, which is what `cargo xtask qemu-cluster`
//! reads.
#![no_std]
#![no_main]

mod flash;
mod lan9118;
mod time;

use coracle::{ArrayLog, Config, LogStorage, Node, NodeId};
use coracle_embedded::app::{App, BoardHooks, Settings};
use coracle_embedded::board::{Board, UDP_PORT};
use coracle_embedded::counters::CounterTable;
use coracle_embedded::journal::{FlashJournal, MarkStore};
use coracle_udp::codec::{mtu_config, Link};
use coracle_udp::node::UdpNode;
use coracle_udp::{ClusterKey, SendCounter};
use defmt::{error, info};
use defmt_semihosting as _;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpEndpoint, Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_time::Duration;
use static_cell::StaticCell;

use flash::SemihostingFlash;
use lan9118::Lan9118;

/// Peer capacity of the node: up to 5 boards (4 peers, one spare).
const PEERS: usize = 5;
/// Largest datagram: fits an Ethernet frame with room to spare.
const MTU: usize = 1024;
/// Entries in one AppendEntries (and the decoder's capacity).
const ENTRIES: usize = 16;
/// Entries the RAM log holds (compaction keeps it short).
const LOG_CAP: usize = 128;
/// Bytes of one command (an `Add` is 6).
const DATA: usize = 8;
/// Counters in the table.
const COUNTERS: usize = 8;
/// Bytes of a snapshot of the table.
const SNAP: usize = CounterTable::<COUNTERS>::ENCODED_LEN;
/// A snapshot and a compaction every this many applied entries.
const COMPACT_EVERY: u64 = 16;
/// The leader stops proposing while this many entries are uncommitted
/// (followers away): room stays for theirs.
const UNCOMMITTED: u64 = 32;
/// The core's tick.
const TICK_MS: u64 = 10;
/// Minimum election timeout, in ticks (500 ms; randomized to [500, 1000) ms).
const ELECTION_TICKS: u32 = 50;
/// Bytes of each flash file: the journal's two banks of 32 KiB (8 erase
/// units each), the send-counter marks.
const LOG_FLASH: usize = 64 * 1024;
const MARK_FLASH: usize = 4 * 1024;
/// The journal rewrites its live state once this many bytes were appended
/// (about 100 entries): often, so the cluster check sees erases within a
/// minute; a product would let half a bank fill.
const REWRITE_ABOVE: usize = 4 * 1024;
/// The cluster's id and key. A demo key: a product provisions its own.
const CLUSTER: u64 = 0x00c0_ac1e;
const KEY: [u8; 32] = *b"coracle qemu cluster demo key!!!";

/// The node's memory log: entries, and a received snapshot chunk of up to
/// a whole table.
type Log = ArrayLog<LOG_CAP, DATA, SNAP>;
type Journal = FlashJournal<SemihostingFlash<LOG_FLASH>, SNAP>;
type Table = CounterTable<COUNTERS>;
type Marks = MarkStore<SemihostingFlash<MARK_FLASH>>;
type Udp = UdpNode<Log, PEERS, MTU, ENTRIES>;

defmt::timestamp!("{=u64:ms}", time::now_ms());

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    error!("panic: {}", defmt::Display2Format(info));
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Stops the board with a message (QEMU exits with a failure).
fn halt(why: &str) -> ! {
    error!("halt: {=str}", why);
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// The QEMU board's hooks: no LED; a halt exits QEMU with a failure.
struct Hooks;

impl BoardHooks for Hooks {
    fn halt(&mut self, why: &str) -> ! {
        halt(why)
    }
}

#[cortex_m_rt::entry]
fn main() -> ! {
    let Some(cp) = cortex_m::Peripherals::take() else {
        halt("core peripherals taken twice")
    };
    time::start(cp.SYST);

    let nic = match Lan9118::new(lan9118::BASE) {
        Ok(nic) => nic,
        Err(e) => {
            error!("LAN9118: {}", e);
            halt("no network")
        }
    };
    let mac = nic.mac();
    let board = match Board::from_mac(mac) {
        Ok(board) => board,
        Err(e) => {
            error!("{}", defmt::Display2Format(&e));
            halt("not a cluster board")
        }
    };
    let id = board.id();
    let ip = board.ip();
    info!(
        "boot board={=u64} boards={=usize} mac={=[u8]:02x} ip={}.{}.{}.{} lan9118={=u32:08x}",
        id,
        board.boards(),
        mac,
        ip[0],
        ip[1],
        ip[2],
        ip[3],
        nic.id_rev()
    );

    // The log and the send-counter mark, from flash.
    let log_flash =
        SemihostingFlash::open(c"coracle-log.bin").unwrap_or_else(|_| halt("log flash"));
    let mark_flash =
        SemihostingFlash::open(c"coracle-mark.bin").unwrap_or_else(|_| halt("mark flash"));
    let mut log = Log::new();
    let mut journal = Journal::open(log_flash, &mut log).unwrap_or_else(|_| halt("log journal"));
    journal.set_rewrite_above(REWRITE_ABOVE);
    // The table from the snapshot the journal keeps; entries after it are
    // applied again from the log.
    let table = match journal.snapshot() {
        Some((_, data)) => Table::decode(data).unwrap_or_else(|_| halt("snapshot")),
        None => Table::new(),
    };
    let marks = Marks::open(mark_flash).unwrap_or_else(|_| halt("mark store"));
    let hs = log.hard_state();
    info!(
        "restored term={=u64} vote={=u64} last={=u64} records={=usize} flash_used={=usize} mark={=u64} snapshot={=u64} digest={=u32:08x}",
        hs.current_term,
        hs.voted_for.unwrap_or(0),
        log.last_index(),
        journal.replayed(),
        journal.used(),
        marks.mark().unwrap_or(0),
        table.applied(),
        table.digest()
    );

    // The node.
    let mut config = mtu_config::<MTU, ENTRIES>(Config::new(id, board.seed()));
    config.election_ticks = ELECTION_TICKS;
    config.heartbeat_ticks = 10;
    config.retransmit_ticks = 20;
    config.max_entry_bytes = DATA;
    // A snapshot of the table is one chunk (the memory log stages no more).
    config.max_snapshot_chunk_bytes = config.max_snapshot_chunk_bytes.min(SNAP);
    config.applied = table.applied();
    let node = Node::new(config, log, &board.members()).unwrap_or_else(|_| halt("node config"));
    let key = ClusterKey::from_bytes(KEY);
    let counter = SendCounter::resume(marks.mark(), 1024);
    let link = Link::new(&key, CLUSTER, id, counter);
    static UDP: StaticCell<Udp> = StaticCell::new();
    let udp = UDP.init(UdpNode::new(node, link).unwrap_or_else(|_| halt("peer table")));

    // The network.
    let net_config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(Ipv4Address::new(ip[0], ip[1], ip[2], ip[3]), 24),
        gateway: None,
        dns_servers: Default::default(),
    });
    static RESOURCES: StaticCell<StackResources<2>> = StaticCell::new();
    let (stack, mut runner) = embassy_net::new(
        nic,
        net_config,
        RESOURCES.init(StackResources::new()),
        board.seed(),
    );
    static RX_META: StaticCell<[PacketMetadata; 16]> = StaticCell::new();
    static TX_META: StaticCell<[PacketMetadata; 16]> = StaticCell::new();
    static RX_BUF: StaticCell<[u8; 4 * MTU]> = StaticCell::new();
    static TX_BUF: StaticCell<[u8; 4 * MTU]> = StaticCell::new();
    let mut socket = UdpSocket::new(
        stack,
        RX_META.init([PacketMetadata::EMPTY; 16]),
        RX_BUF.init([0; 4 * MTU]),
        TX_META.init([PacketMetadata::EMPTY; 16]),
        TX_BUF.init([0; 4 * MTU]),
    );
    if socket.bind(UDP_PORT).is_err() {
        halt("bind");
    }
    let mut peers: heapless::Vec<(NodeId, IpEndpoint), PEERS> = heapless::Vec::new();
    for peer in board.peers() {
        let [a, b, c, d] = coracle_embedded::board::ip_of(peer);
        let _ = peers.push((
            peer,
            IpEndpoint::new(Ipv4Address::new(a, b, c, d).into(), UDP_PORT),
        ));
    }

    let settings = Settings {
        compact_every: COMPACT_EVERY,
        uncommitted: UNCOMMITTED,
    };
    let mut app = App::new(id, table, journal, marks, settings, Hooks);
    time::block_on(embassy_futures::join::join(
        runner.run(),
        coracle_udp::embassy::run_node(
            udp,
            &mut app,
            socket,
            &peers,
            Duration::from_millis(TICK_MS),
        ),
    ));
    halt("node loop ended")
}
