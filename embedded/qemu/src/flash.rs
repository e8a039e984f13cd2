//! A NorFlash on a file of the host, reached through ARM semihosting: the
//! QEMU boards' flash, which survives a restart of the QEMU process (the
//! file lives in the board's directory on the host).
//!
//! It behaves as NOR flash: erased bytes read 0xff, a write only clears
//! bits (it ANDs into what is there), an erase sets a range back to 0xff.
//! Each operation is one or two semihosting calls (SYS_SEEK then
//! SYS_READ/SYS_WRITE), which QEMU carries out on the host file at once:
//! a write that returned is in the host's page cache and survives a
//! `kill -9` of QEMU.
//!
//! An erase takes as long as a real NOR sector's: [`ERASE_MS`] per
//! [`NorFlash::ERASE_SIZE`] unit. Like a SPI NOR chip, the flash erases in
//! the background ([`JournalFlash::start_erase`]) and is busy meanwhile:
//! a read, write or erase waits for it (the CPU spins, the SysTick keeps
//! counting). The journal starts one unit's erase per step between turns of
//! the node's loop and comes back while it is busy, so a board's timers and
//! heartbeats go on during the erase of a whole bank; the QEMU cluster
//! check shows it.

use coracle_embedded::journal::JournalFlash;
use cortex_m_semihosting::nr;
use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// A semihosting call failed or an access was out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum FlashError {
    /// Outside the flash, or misaligned.
    OutOfBounds,
    /// The host refused the operation.
    Host,
}

impl NorFlashError for FlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Self::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            Self::Host => NorFlashErrorKind::Other,
        }
    }
}

/// How long an erase of one 4 KiB unit takes: a slow NOR part's sector
/// erase (SPI NOR: 45 ms typical, 400 ms at most), long enough that the
/// erase of a 32 KiB journal bank (1.2 s) outlasts an election timeout.
pub const ERASE_MS: u64 = 150;

/// `SIZE` bytes of flash in a host file.
pub struct SemihostingFlash<const SIZE: usize> {
    handle: usize,
    /// The erase under way ends at this millisecond.
    busy_until: u64,
}

fn call<const N: usize>(op: usize, args: &[usize; N]) -> usize {
    // SAFETY: a semihosting call (BKPT 0xAB) with a parameter block the
    // host only reads; every pointer in `args` is to a live buffer of the
    // length next to it, as each caller below builds it. QEMU runs with
    // `-semihosting-config enable=on`, so the breakpoint is the host's.
    unsafe { cortex_m_semihosting::syscall(op, args) }
}

impl<const SIZE: usize> SemihostingFlash<SIZE> {
    /// Opens `path` (NUL-terminated) in QEMU's working directory, creating
    /// it erased if it does not exist.
    ///
    /// # Errors
    /// [`FlashError::Host`] if the host cannot open or create it.
    pub fn open(path: &core::ffi::CStr) -> Result<Self, FlashError> {
        let name = path.to_bytes();
        let open = |mode: usize| call(nr::OPEN, &[name.as_ptr() as usize, mode, name.len()]);
        let handle = open(nr::open::RW_BINARY);
        if handle != usize::MAX {
            let flash = Self {
                handle,
                busy_until: 0,
            };
            if call(nr::FLEN, &[handle]) == SIZE {
                return Ok(flash);
            }
            // A file of another size: start erased.
            let _ = call(nr::CLOSE, &[handle]);
        }
        let handle = open(nr::open::RW_TRUNC_BINARY);
        if handle == usize::MAX {
            return Err(FlashError::Host);
        }
        let mut flash = Self {
            handle,
            busy_until: 0,
        };
        // A new file is a factory-erased part: no erase time.
        flash.fill_erased(0, SIZE)?;
        Ok(flash)
    }

    /// Sets `from..to` to 0xff.
    fn fill_erased(&mut self, from: usize, to: usize) -> Result<(), FlashError> {
        let ones = [0xffu8; 256];
        let mut at = from;
        while at < to {
            let n = (to - at).min(ones.len());
            self.write_raw(at, &ones[..n])?;
            at += n;
        }
        Ok(())
    }

    /// Waits for the erase under way, as a driver polls a chip's busy bit.
    fn wait_ready(&self) {
        while crate::time::now_ms() < self.busy_until {
            core::hint::spin_loop();
        }
    }

    fn seek(&self, offset: usize) -> Result<(), FlashError> {
        match call(nr::SEEK, &[self.handle, offset]) {
            0 => Ok(()),
            _ => Err(FlashError::Host),
        }
    }

    fn check(offset: u32, len: usize) -> Result<usize, FlashError> {
        let start = offset as usize;
        if start.checked_add(len).is_some_and(|end| end <= SIZE) {
            Ok(start)
        } else {
            Err(FlashError::OutOfBounds)
        }
    }

    fn write_raw(&mut self, start: usize, bytes: &[u8]) -> Result<(), FlashError> {
        self.seek(start)?;
        // SYS_WRITE returns the number of bytes NOT written.
        match call(
            nr::WRITE,
            &[self.handle, bytes.as_ptr() as usize, bytes.len()],
        ) {
            0 => Ok(()),
            _ => Err(FlashError::Host),
        }
    }
}

impl<const SIZE: usize> ErrorType for SemihostingFlash<SIZE> {
    type Error = FlashError;
}

impl<const SIZE: usize> ReadNorFlash for SemihostingFlash<SIZE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        let start = Self::check(offset, bytes.len())?;
        self.wait_ready();
        self.seek(start)?;
        // SYS_READ returns the number of bytes NOT read.
        match call(
            nr::READ,
            &[self.handle, bytes.as_mut_ptr() as usize, bytes.len()],
        ) {
            0 => Ok(()),
            _ => Err(FlashError::Host),
        }
    }

    fn capacity(&self) -> usize {
        SIZE
    }
}

impl<const SIZE: usize> NorFlash for SemihostingFlash<SIZE> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        self.start_erase(from, to)?;
        self.wait_ready();
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        let start = Self::check(offset, bytes.len())?;
        self.wait_ready();
        if start & 3 != 0 || bytes.len() & 3 != 0 {
            return Err(FlashError::OutOfBounds);
        }
        // NOR: a write only clears bits.
        let mut chunk = [0u8; 128];
        for (i, part) in bytes.chunks(chunk.len()).enumerate() {
            let at = start + i * chunk.len();
            let old = &mut chunk[..part.len()];
            self.read(at as u32, old)?;
            for (o, n) in old.iter_mut().zip(part) {
                *o &= *n;
            }
            let merged = &chunk[..part.len()];
            self.write_raw(at, merged)?;
        }
        Ok(())
    }
}

impl<const SIZE: usize> JournalFlash for SemihostingFlash<SIZE> {
    /// The host file is erased at once (a power cut, `kill -9`, finds it
    /// erased); the flash stays busy for [`ERASE_MS`] per unit.
    fn start_erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        let len = to.saturating_sub(from) as usize;
        let start = Self::check(from, len)?;
        self.wait_ready();
        self.fill_erased(start, to as usize)?;
        let units = len.div_ceil(Self::ERASE_SIZE) as u64;
        self.busy_until = crate::time::now_ms() + ERASE_MS * units;
        Ok(())
    }

    fn erase_busy(&mut self) -> bool {
        crate::time::now_ms() < self.busy_until
    }
}
