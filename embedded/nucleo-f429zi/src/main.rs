//! Coracle on a NUCLEO-F429ZI: a Raft node over authenticated UDP on the
//! board's Ethernet port (STM32F429 MAC, LAN8742A PHY over RMII),
//! replicating a table of counters, with its log in the chip's own flash.
//! Logs go out as defmt over RTT (probe-rs prints them).
//!
//! It runs the same node as the QEMU boards (`embedded/qemu`): the same
//! `coracle-udp` embassy-net loop, the same counter table, the same flash
//! journal, the same addressing (`coracle_embedded::board`: node `id` of
//! `boards` is `169.254.77.<id>`, UDP port 7700, MAC `02:c0:ac:00:<boards>:<id>`)
//! and the same log lines, so a QEMU board and a real board read alike.
//!
//! # Who a board is
//!
//! The chip has no MAC of its own to read an identity from, so the image
//! carries it (see `build.rs`): either a table of the cluster's chip unique
//! ids (`CORACLE_UIDS`, one image for every board: a board finds its own
//! 96-bit id in the table) or a fixed `CORACLE_BOARD=<id>/<boards>` (one
//! image per board). The MAC is then made from the id, as on QEMU.
//!
//! # Flash
//!
//! The program lives in bank 1 (memory.x stops it there). Bank 2 holds the
//! state: sectors 12-15 (4 x 16 KiB, `Bank2Region1`) the flash journal, the
//! node's durable store (two banks of two sectors; it rewrites its live
//! state into the other one once half a bank was appended, then erases the
//! old one a sector per turn of the node's loop), sector 16 (64 KiB,
//! `Bank2Region2`) the UDP send-counter marks. The small sectors keep each
//! erase step short (a 16 KiB sector: 0.25-0.5 s with interrupts off; a
//! 128 KiB one would take 1-2 s, longer than an election timeout).
//! Flashing a new image leaves bank 2 alone, so a board keeps its term,
//! vote and log across reflashes as across resets. Holding the blue USER
//! button through reset wipes both (a new cluster: wipe every board).
//!
//! # LEDs
//!
//! LD1 (green): this board leads. LD2 (blue): the Ethernet link is up.
//! LD3 (red): halted (see the log).
#![no_std]
#![no_main]

use coracle::{ArrayLog, Config, LogStorage, Node, NodeId, Role};
use coracle_embedded::app::{App, BoardHooks, Settings};
use coracle_embedded::board::{mac_for, Board, UDP_PORT};
use coracle_embedded::counters::CounterTable;
use coracle_embedded::journal::{BlockingErase, FlashJournal, MarkStore};
use coracle_udp::codec::{mtu_config, Link};
use coracle_udp::node::UdpNode;
use coracle_udp::{ClusterKey, SendCounter};
use defmt::{error, info, warn};
use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpEndpoint, Ipv4Address, Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_stm32::eth::{self, Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::flash::{Bank2Region1, Bank2Region2, Blocking, Flash};
use embassy_stm32::gpio::{Input, Level, Output as Pin, Pull, Speed};
use embassy_stm32::peripherals::{ETH, ETH_SMA};
use embassy_stm32::time::Hertz;
use embassy_stm32::{bind_interrupts, uid};
use embassy_time::Duration;
use static_cell::StaticCell;

/// The cluster's identity, from the build (see `build.rs`).
mod identity {
    include!(concat!(env!("OUT_DIR"), "/identity.rs"));
}

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
/// A snapshot and a compaction every this many applied entries. They are
/// appended to the journal; once half a bank was appended the live state
/// is rewritten into the other bank and the old one erased, a 16 KiB
/// sector per turn of the loop (about once per 350 entries).
const COMPACT_EVERY: u64 = 32;
/// The leader stops proposing while this many entries are uncommitted
/// (followers away): room stays for theirs.
const UNCOMMITTED: u64 = 24;
/// The core's tick.
const TICK_MS: u64 = 10;
/// Minimum election timeout, in ticks (500 ms; randomized to [500, 1000) ms).
const ELECTION_TICKS: u32 = 50;
/// The cluster's id and key. A demo key: a product provisions its own.
const CLUSTER: u64 = 0x00c0_ac1e;
const KEY: [u8; 32] = *b"coracle qemu cluster demo key!!!";

type Phy = GenericPhy<Sma<'static, ETH_SMA>>;
type Device = Ethernet<'static, ETH, Phy>;
/// The node's memory log: entries, and a received snapshot chunk of up to
/// a whole table.
type Log = ArrayLog<LOG_CAP, DATA, SNAP>;
/// The journal erases a 16 KiB sector per step with the CPU waiting
/// (embassy-stm32's blocking erase).
type Journal = FlashJournal<BlockingErase<Bank2Region1<'static, Blocking>>, SNAP>;
type Table = CounterTable<COUNTERS>;
type Marks = MarkStore<Bank2Region2<'static, Blocking>>;
type Udp = UdpNode<Log, PEERS, MTU, ENTRIES>;

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
});

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    error!("panic: {}", defmt::Display2Format(info));
    red_led_and_stop()
}

/// Stops the board with a message.
fn halt(why: &str) -> ! {
    error!("halt: {=str}", why);
    red_led_and_stop()
}

/// Lights LD3 (PB14) and stops: a breakpoint under a debugger (probe-rs
/// ends `run` there), a sleeping core otherwise.
fn red_led_and_stop() -> ! {
    // SAFETY: the board is stopping: the pin is LD3's and nothing else in
    // the firmware drives PB14; the output is leaked so it stays lit.
    let pin = unsafe { embassy_stm32::peripherals::PB14::steal() };
    core::mem::forget(Pin::new(pin, Level::High, Speed::Low));
    if cortex_m::peripheral::DCB::is_debugger_attached() {
        cortex_m::asm::bkpt();
    }
    loop {
        cortex_m::asm::wfi();
    }
}

/// This board's `(id, boards)`: its place in the `CORACLE_UIDS` table, or
/// the fixed setting of the image.
fn identity(uid: &[u8; 12]) -> (u8, u8) {
    if identity::UIDS.is_empty() {
        return identity::FIXED;
    }
    match identity::UIDS.iter().position(|u| u == uid) {
        Some(i) => (i as u8 + 1, identity::UIDS.len() as u8),
        None => {
            error!(
                "this chip (uid={=str}) is not in the image's CORACLE_UIDS table",
                uid::uid_hex()
            );
            halt("unknown chip")
        }
    }
}

/// The NUCLEO board's hooks: LD1 (green) lit while this board leads; a
/// halt lights LD3.
struct Hooks {
    leader_led: Pin<'static>,
}

impl BoardHooks for Hooks {
    fn role_changed(&mut self, role: Role) {
        self.leader_led.set_level(if role == Role::Leader {
            Level::High
        } else {
            Level::Low
        });
    }

    fn halt(&mut self, why: &str) -> ! {
        halt(why)
    }
}

/// Runs the IP stack (embassy-net's runner over the Ethernet driver).
#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

/// Follows the Ethernet link: LD2 and a log line on every change.
#[embassy_executor::task]
async fn link_task(stack: Stack<'static>, mut led: Pin<'static>) -> ! {
    loop {
        stack.wait_link_up().await;
        led.set_high();
        info!("link up");
        stack.wait_link_down().await;
        led.set_low();
        warn!("link down: check the cable and the switch");
    }
}

/// 180 MHz from the 8 MHz clock the on-board ST-LINK gives the chip (HSE
/// bypass); the Ethernet MAC needs HCLK of at least 25 MHz.
fn clocks() -> embassy_stm32::Config {
    use embassy_stm32::rcc::{
        AHBPrescaler, APBPrescaler, Hse, HseMode, Pll, PllMul, PllPDiv, PllPreDiv, PllSource,
        Sysclk,
    };
    let mut config = embassy_stm32::Config::default();
    config.rcc.hse = Some(Hse {
        freq: Hertz(8_000_000),
        mode: HseMode::Bypass,
    });
    config.rcc.pll_src = PllSource::HSE;
    config.rcc.pll = Some(Pll {
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL180,
        divp: Some(PllPDiv::DIV2),
        divq: None,
        divr: None,
    });
    config.rcc.ahb_pre = AHBPrescaler::DIV1;
    config.rcc.apb1_pre = APBPrescaler::DIV4;
    config.rcc.apb2_pre = APBPrescaler::DIV2;
    config.rcc.sys = Sysclk::PLL1_P;
    config
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_stm32::init(clocks());

    // Who this board is.
    let uid = uid::uid();
    let (board_id, boards) = identity(&uid);
    let mac = mac_for(board_id, boards);
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
        "boot board={=u64} boards={=usize} mac={=[u8]:02x} ip={}.{}.{}.{} uid={=str}",
        id,
        board.boards(),
        mac,
        ip[0],
        ip[1],
        ip[2],
        ip[3],
        uid::uid_hex()
    );

    // The log and the send-counter mark, from bank 2 of the flash.
    let regions = Flash::new_blocking(p.FLASH).into_blocking_regions();
    let mut log_flash = regions.bank2_region1;
    let mut mark_flash = regions.bank2_region2;
    let button = Input::new(p.PC13, Pull::Down);
    if button.is_high() {
        warn!("USER button held: wiping this board's Raft state (log and marks)");
        let log_end = log_flash.0.size;
        let mark_end = mark_flash.0.size;
        if log_flash.blocking_erase(0, log_end).is_err()
            || mark_flash.blocking_erase(0, mark_end).is_err()
        {
            halt("wipe failed");
        }
        info!("wiped: release the button");
    }
    drop(button);
    let mut log = Log::new();
    let journal =
        Journal::open(BlockingErase(log_flash), &mut log).unwrap_or_else(|_| halt("log journal"));
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

    // The Ethernet port: RMII to the LAN8742A (the NUCLEO-144 pinout).
    static PACKETS: StaticCell<PacketQueue<4, 4>> = StaticCell::new();
    let device = Ethernet::new(
        PACKETS.init(PacketQueue::new()),
        p.ETH,
        Irqs,
        p.PA1,  // REF_CLK
        p.PA7,  // CRS_DV
        p.PC4,  // RXD0
        p.PC5,  // RXD1
        p.PG13, // TXD0
        p.PB13, // TXD1
        p.PG11, // TX_EN
        mac,
        p.ETH_SMA,
        p.PA2, // MDIO
        p.PC1, // MDC
    );

    // The network.
    let net_config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(Ipv4Address::new(ip[0], ip[1], ip[2], ip[3]), 24),
        gateway: None,
        dns_servers: Default::default(),
    });
    let net_seed = board.seed()
        ^ u64::from_le_bytes([
            uid[0], uid[1], uid[2], uid[3], uid[4], uid[5], uid[6], uid[7],
        ]);
    static RESOURCES: StaticCell<StackResources<2>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        device,
        net_config,
        RESOURCES.init(StackResources::new()),
        net_seed,
    );
    spawner.spawn(net_task(runner).unwrap_or_else(|_| halt("net task")));
    let link_led = Pin::new(p.PB7, Level::Low, Speed::Low);
    spawner.spawn(link_task(stack, link_led).unwrap_or_else(|_| halt("link task")));

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
    let hooks = Hooks {
        leader_led: Pin::new(p.PB0, Level::Low, Speed::Low),
    };
    let mut app = App::new(id, table, journal, marks, settings, hooks);
    coracle_udp::embassy::run_node(
        udp,
        &mut app,
        socket,
        &peers,
        Duration::from_millis(TICK_MS),
    )
    .await;
    halt("node loop ended")
}
