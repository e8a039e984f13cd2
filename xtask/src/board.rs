//! `cargo xtask board`: builds the real-board firmware of
//! `embedded/nucleo-f429zi` (NUCLEO-F429ZI, STM32F429ZI, Cortex-M4F) the way
//! its README section says (`cargo build --release` in its folder, its own
//! workspace) and prints its footprint against the chip. It cannot run here:
//! flashing needs the board and probe-rs.

use std::path::{Path, PathBuf};

use crate::cmd::{self, Error, Result};
use crate::elf::Footprint;
use crate::nostd;

/// The board firmware's target and binary.
pub const BOARD_TARGET: &str = "thumbv7em-none-eabihf";
const BOARD_BIN: &str = "coracle-nucleo-f429zi";
/// Flash the program may use: bank 1 (memory.x; bank 2 holds the Raft log).
pub const BOARD_FLASH: u64 = 1024 * 1024;
/// SRAM1-3 of the STM32F429ZI (the stack takes what statics leave).
pub const BOARD_RAM: u64 = 192 * 1024;

/// The folder of the board firmware.
pub fn board_dir() -> PathBuf {
    cmd::workspace_root().join("embedded").join("nucleo-f429zi")
}

/// Builds the board firmware (release, `DEFMT_LOG=info`) into
/// `<target>/board` and returns the ELF's path.
pub fn build_firmware(target_dir: &Path) -> Result<PathBuf> {
    let out = target_dir.join("board");
    let mut build = cmd::cargo();
    build
        .current_dir(board_dir())
        .env("CARGO_TARGET_DIR", &out)
        .env("DEFMT_LOG", "info")
        .args(["build", "--release", "--target", BOARD_TARGET]);
    cmd::run_inherited(&mut build)?;
    Ok(out.join(BOARD_TARGET).join("release").join(BOARD_BIN))
}

/// Builds the board firmware and returns its footprint.
pub fn footprint(target_dir: &Path) -> Result<Footprint> {
    nostd::ensure_targets(&[BOARD_TARGET])?;
    let elf_path = build_firmware(target_dir)?;
    let (elf, _) = nostd::read_elf_with_bytes(&elf_path)?;
    Ok(elf.footprint())
}

/// `cargo xtask board`.
pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        return Err(Error::new(format!(
            "unknown argument `{arg}` for `cargo xtask board`"
        )));
    }
    let target_dir = cmd::target_dir()?;
    let f = footprint(&target_dir)?;
    let percent = |part: u64, whole: u64| part as f64 * 100.0 / whole as f64;
    println!(
        "nucleo-f429zi firmware ({BOARD_TARGET}): {} B flash ({:.1} % of bank 1), \
         {} B static RAM ({:.1} % of {} KiB SRAM; the rest is stack), no heap",
        f.flash(),
        percent(f.flash(), BOARD_FLASH),
        f.ram(),
        percent(f.ram(), BOARD_RAM),
        BOARD_RAM / 1024
    );
    println!(
        "  text {} rodata {} data {} bss {}; ELF in {}",
        f.text,
        f.rodata,
        f.data,
        f.bss,
        target_dir
            .join("board")
            .join(BOARD_TARGET)
            .join("release")
            .join(BOARD_BIN)
            .display()
    );
    Ok(())
}
