//! A polled driver for the SMSC LAN9118 Ethernet MAC+PHY of the MPS2 boards
//! (at 0x4020_0000 on QEMU's mps2-an385/an386/an500), for embassy-net.
//!
//! The chip has FIFOs, not descriptors: a received frame is a status word
//! in the RX status FIFO (its length, FCS included) and its bytes in the RX
//! data FIFO, read as 32-bit words; a frame is sent by writing two command
//! words and its bytes to the TX data FIFO. No interrupt is used: the
//! executor polls the driver at every SysTick (1 ms), which is all a Raft
//! node at a few hundred datagrams per second needs.
//!
//! The only `unsafe` of the firmware's drivers is here: the volatile reads
//! and writes of the chip's registers ([`Regs`]).

use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};

/// Where the LAN9118 is on the MPS2 boards.
pub const BASE: usize = 0x4020_0000;

// Register offsets (SMSC LAN9118 datasheet, "System Control and Status Registers").
const RX_DATA_FIFO: usize = 0x00;
const TX_DATA_FIFO: usize = 0x20;
const RX_STATUS_FIFO: usize = 0x40;
const TX_STATUS_FIFO: usize = 0x48;
const ID_REV: usize = 0x50;
const INT_EN: usize = 0x5c;
const BYTE_TEST: usize = 0x64;
const RX_CFG: usize = 0x6c;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7c;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const MAC_CSR_CMD: usize = 0xa4;
const MAC_CSR_DATA: usize = 0xa8;

// MAC control and status registers, reached through MAC_CSR_CMD/DATA.
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;

const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_RXEN: u32 = 1 << 2;
const MAC_CR_FDPX: u32 = 1 << 20;
const CSR_BUSY: u32 = 1 << 31;
const CSR_READ: u32 = 1 << 30;
const HW_CFG_SRST: u32 = 1;
const PMT_READY: u32 = 1;
const TX_CFG_TX_ON: u32 = 1 << 1;
const TX_CMD_A_FIRST: u32 = 1 << 13;
const TX_CMD_A_LAST: u32 = 1 << 12;
const RX_STS_ERROR: u32 = 1 << 15;

/// The largest Ethernet frame without FCS.
pub const MAX_FRAME: usize = 1514;
const BUF: usize = 1536;
/// Polls of a busy bit before giving up.
const SPIN: u32 = 100_000;

/// The chip's register block.
struct Regs {
    base: usize,
}

impl Regs {
    fn read(&self, offset: usize) -> u32 {
        // SAFETY: `base` is the LAN9118's register block (checked by `new`
        // through BYTE_TEST) and `offset` one of its 32-bit registers; a
        // volatile read is how a FIFO or status register is read.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`; the chip's registers have no memory
        // semantics the compiler could rely on, hence volatile.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    fn mac_wait(&self) -> Result<(), Error> {
        for _ in 0..SPIN {
            if self.read(MAC_CSR_CMD) & CSR_BUSY == 0 {
                return Ok(());
            }
        }
        Err(Error::Timeout)
    }

    fn mac_read(&self, reg: u32) -> Result<u32, Error> {
        self.mac_wait()?;
        self.write(MAC_CSR_CMD, CSR_BUSY | CSR_READ | reg);
        self.mac_wait()?;
        Ok(self.read(MAC_CSR_DATA))
    }

    fn mac_write(&self, reg: u32, value: u32) -> Result<(), Error> {
        self.mac_wait()?;
        self.write(MAC_CSR_DATA, value);
        self.write(MAC_CSR_CMD, CSR_BUSY | reg);
        self.mac_wait()
    }
}

/// Why the chip could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum Error {
    /// BYTE_TEST did not read 0x87654321: no LAN9118 there.
    NotFound(u32),
    /// The chip did not leave reset or a MAC register access did not end.
    Timeout,
}

/// The LAN9118, with one receive and one transmit buffer.
pub struct Lan9118 {
    regs: Regs,
    mac: [u8; 6],
    rx: [u8; BUF],
    tx: [u8; BUF],
    /// Frames dropped: receive errors and oversized frames.
    pub rx_dropped: u32,
}

impl Lan9118 {
    /// Resets the chip at `base`, reads the MAC address the board was given
    /// (QEMU: `-net nic,macaddr=...`), and enables the transmitter and the
    /// receiver (unicast to its MAC and broadcast, not promiscuous).
    ///
    /// # Errors
    /// See [`Error`].
    pub fn new(base: usize) -> Result<Self, Error> {
        let regs = Regs { base };
        let test = regs.read(BYTE_TEST);
        if test != 0x8765_4321 {
            return Err(Error::NotFound(test));
        }
        regs.write(HW_CFG, HW_CFG_SRST);
        let mut ready = false;
        for _ in 0..SPIN {
            if regs.read(HW_CFG) & HW_CFG_SRST == 0 && regs.read(PMT_CTRL) & PMT_READY != 0 {
                ready = true;
                break;
            }
        }
        if !ready {
            return Err(Error::Timeout);
        }
        regs.write(INT_EN, 0);
        let low = regs.mac_read(MAC_ADDRL)?.to_le_bytes();
        let high = regs.mac_read(MAC_ADDRH)?.to_le_bytes();
        let mac = [low[0], low[1], low[2], low[3], high[0], high[1]];
        regs.write(RX_CFG, 0);
        regs.write(TX_CFG, TX_CFG_TX_ON);
        regs.mac_write(MAC_CR, MAC_CR_TXEN | MAC_CR_RXEN | MAC_CR_FDPX)?;
        Ok(Self {
            regs,
            mac,
            rx: [0; BUF],
            tx: [0; BUF],
            rx_dropped: 0,
        })
    }

    /// The chip's ID_REV register.
    pub fn id_rev(&self) -> u32 {
        self.regs.read(ID_REV)
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Reads the next good frame into `self.rx`; returns its length.
    fn receive_frame(&mut self) -> Option<usize> {
        loop {
            let pending = (self.regs.read(RX_FIFO_INF) >> 16) & 0xff;
            if pending == 0 {
                return None;
            }
            let status = self.regs.read(RX_STATUS_FIFO);
            // Length with the 4-byte FCS the chip leaves in the FIFO.
            let len = ((status >> 16) & 0x3fff) as usize;
            let words = len.div_ceil(4);
            let good = status & RX_STS_ERROR == 0 && (14 + 4..=BUF).contains(&len);
            for i in 0..words {
                let word = self.regs.read(RX_DATA_FIFO).to_le_bytes();
                if good {
                    self.rx[i * 4..i * 4 + 4].copy_from_slice(&word);
                }
            }
            if good {
                return Some(len - 4);
            }
            self.rx_dropped = self.rx_dropped.wrapping_add(1);
        }
    }

    /// Room in the TX data FIFO, in bytes.
    fn tx_room(&self) -> usize {
        (self.regs.read(TX_FIFO_INF) & 0xffff) as usize
    }

    /// Drains the TX status FIFO (nobody reads the statuses; a full FIFO
    /// would stop the transmitter on real silicon).
    fn drain_tx_status(&self) {
        for _ in 0..((self.regs.read(TX_FIFO_INF) >> 16) & 0xff) {
            let _ = self.regs.read(TX_STATUS_FIFO);
        }
    }
}

fn send_frame(regs: &Regs, frame: &[u8]) {
    let len = frame.len() as u32;
    regs.write(TX_DATA_FIFO, TX_CMD_A_FIRST | TX_CMD_A_LAST | len);
    regs.write(TX_DATA_FIFO, (len << 16) | len);
    for chunk in frame.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        regs.write(TX_DATA_FIFO, u32::from_le_bytes(word));
    }
}

/// A received frame, in the driver's receive buffer.
pub struct RxToken<'a> {
    frame: &'a mut [u8],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Room to send one frame.
pub struct TxToken<'a> {
    regs: &'a Regs,
    buf: &'a mut [u8; BUF],
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MAX_FRAME);
        let frame = &mut self.buf[..len];
        let r = f(frame);
        send_frame(self.regs, frame);
        r
    }
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _cx: &mut Context) -> Option<(RxToken<'_>, TxToken<'_>)> {
        // Polled: the executor polls again at the next SysTick, no waker.
        self.drain_tx_status();
        if self.tx_room() < BUF + 8 {
            return None;
        }
        let len = self.receive_frame()?;
        Some((
            RxToken {
                frame: &mut self.rx[..len],
            },
            TxToken {
                regs: &self.regs,
                buf: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, _cx: &mut Context) -> Option<TxToken<'_>> {
        self.drain_tx_status();
        if self.tx_room() < BUF + 8 {
            return None;
        }
        Some(TxToken {
            regs: &self.regs,
            buf: &mut self.tx,
        })
    }

    fn link_state(&mut self, _cx: &mut Context) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(1);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
