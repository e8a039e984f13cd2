//! `cargo xtask size`: the flash and static RAM the core takes on each bare-metal target,
//! measured on the link-check program (the core alone, with a panic handler that loops
//! and no runtime crate), and the size of a node value; and the QEMU board firmware
//! (`embedded/qemu`) against its budget, and the NUCLEO-F429ZI firmware
//! (`embedded/nucleo-f429zi`).

use crate::board;
use crate::cmd::{self, Error, Result};
use crate::elf::Footprint;
use crate::nostd::{self, TARGETS};
use crate::qemu;

/// Issue 7's budget for the QEMU firmware with 5 peers: 96 KiB of flash.
const FIRMWARE_FLASH_BUDGET: u64 = 96 * 1024;
/// And 48 KiB of static RAM.
const FIRMWARE_RAM_BUDGET: u64 = 48 * 1024;

/// Symbols of the link-check program holding `size_of` its node and its log.
const NODE_BYTES: &str = "CORACLE_NODE_BYTES";
const LOG_BYTES: &str = "CORACLE_LOG_BYTES";

/// One row of the table.
struct Row<'a> {
    target: &'a str,
    footprint: Footprint,
    node_bytes: Option<u32>,
    log_bytes: Option<u32>,
}

/// Builds the link-check program for every target and prints a table of its footprint.
pub fn run(args: &[String]) -> Result<()> {
    let mut sections = false;
    for arg in args {
        match arg.as_str() {
            "-v" | "--sections" => sections = true,
            other => {
                return Err(Error::new(format!(
                    "unknown argument `{other}` for `cargo xtask size` (try --sections)"
                )))
            }
        }
    }
    nostd::ensure_targets(&TARGETS)?;
    let target_dir = cmd::target_dir()?;
    let mut rows = Vec::new();
    for target in TARGETS {
        let path = nostd::link_check(&target_dir, target)?;
        let (elf, bytes) = nostd::read_elf_with_bytes(&path)?;
        if sections {
            println!("{target} ({}):", path.display());
            for section in elf.sections.iter().filter(|s| s.is_alloc() && s.size > 0) {
                println!(
                    "    {:<24} {:>8} B at {:#010x}",
                    section.name, section.size, section.addr
                );
            }
        }
        rows.push(Row {
            target,
            footprint: elf.footprint(),
            node_bytes: elf.read_u32_symbol(&bytes, NODE_BYTES),
            log_bytes: elf.read_u32_symbol(&bytes, LOG_BYTES),
        });
    }
    // The QEMU board firmware (embedded/qemu), with its budget of issue 7.
    let firmware = qemu::build_firmware(&target_dir)?;
    let (elf, _) = nostd::read_elf_with_bytes(&firmware)?;
    let firmware_footprint = elf.footprint();
    rows.push(Row {
        target: "qemu firmware (thumbv7m)",
        footprint: firmware_footprint,
        node_bytes: None,
        log_bytes: None,
    });
    // The real-board firmware (embedded/nucleo-f429zi): no budget of its own
    // beyond the chip (its linker script refuses an image past bank 1).
    rows.push(Row {
        target: "nucleo-f429zi (thumbv7em)",
        footprint: board::footprint(&target_dir)?,
        node_bytes: None,
        log_bytes: None,
    });
    print!("{}", table(&rows));
    println!("bytes; flash = text + rodata + data (initial values); static RAM = data + bss");
    println!(
        "node = size_of::<Node<ArrayLog<64, 32, 8>, 5>>() (up to 5 peers, other capacities at their \
         defaults), of which log = size_of::<ArrayLog<64, 32, 8>>(); the host puts it on the stack or \
         in a static"
    );
    println!("program: xtask/nostd-check (release: opt-level = \"s\", LTO, panic = \"abort\")");
    println!(
        "qemu firmware: embedded/qemu for mps2-an385, 5 peers, 128-entry log, UDP MTU 1024, \
         embassy-net, defmt (DEFMT_LOG=info); budget {} B flash, {} B static RAM, no heap",
        FIRMWARE_FLASH_BUDGET, FIRMWARE_RAM_BUDGET
    );
    println!(
        "nucleo-f429zi: embedded/nucleo-f429zi, the same node on embassy-stm32 Ethernet with \
         embassy-executor, defmt-rtt, 4+4 Ethernet DMA buffers; of {} KiB program flash (bank 1) \
         and {} KiB SRAM",
        board::BOARD_FLASH / 1024,
        board::BOARD_RAM / 1024
    );
    if firmware_footprint.flash() > FIRMWARE_FLASH_BUDGET
        || firmware_footprint.ram() > FIRMWARE_RAM_BUDGET
    {
        return Err(Error::new(format!(
            "the QEMU firmware is over its budget: {} B flash (max {FIRMWARE_FLASH_BUDGET}), {} B static RAM (max {FIRMWARE_RAM_BUDGET})",
            firmware_footprint.flash(),
            firmware_footprint.ram()
        )));
    }
    Ok(())
}

/// The footprint table, one row per target.
fn table(rows: &[Row<'_>]) -> String {
    let line = |cells: [&str; 9]| {
        format!(
            "{:<28} {:>7} {:>7} {:>6} {:>6} {:>7} {:>10} {:>7} {:>7}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8]
        )
    };
    let or_dash = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut out = line([
        "target",
        "text",
        "rodata",
        "data",
        "bss",
        "flash",
        "static RAM",
        "node",
        "log",
    ]);
    for row in rows {
        let f = row.footprint;
        out.push_str(&line([
            row.target,
            &f.text.to_string(),
            &f.rodata.to_string(),
            &f.data.to_string(),
            &f.bss.to_string(),
            &f.flash().to_string(),
            &f.ram().to_string(),
            &or_dash(row.node_bytes),
            &or_dash(row.log_bytes),
        ]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_one_aligned_row_per_target() {
        let footprint = Footprint {
            text: 1234,
            rodata: 56,
            data: 8,
            bss: 100,
        };
        let rows = [
            Row {
                target: "thumbv6m-none-eabi",
                footprint,
                node_bytes: Some(4321),
                log_bytes: None,
            },
            Row {
                target: "riscv32imc-unknown-none-elf",
                footprint: Footprint::default(),
                node_bytes: None,
                log_bytes: Some(7),
            },
        ];
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
        assert!(lines[1].starts_with("thumbv6m-none-eabi "));
        assert!(
            lines[1].ends_with("   1298        108    4321       -"),
            "{table}"
        );
        assert!(
            lines[2].ends_with("     0          0       -       7"),
            "{table}"
        );
    }
}
