//! Repository automation for Coracle, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`). Dependency-free on purpose: it builds in seconds on a fresh
//! machine.
//!
//! Commands:
//! - `nostd`: builds the core for bare-metal targets (and wasm32) without `std` or `alloc`, checks
//!   that no dependency turns `std`/`alloc` on, and links a `#![no_std]` program that
//!   uses the core with no global allocator (`xtask/nostd-check/`).
//! - `size`: the flash and static RAM of that program, per target, read from its ELF.
//! - `qemu-cluster`: a cluster of QEMU boards running the firmware of `embedded/qemu`,
//!   with the checks of issue 7 (see `qemu.rs`).
//! - `board`: builds the real-board firmware (`embedded/nucleo-f429zi`) and prints its
//!   footprint (see `board.rs`).
//! - `web`, `web-test`: builds and serves the interactive model (`web/`), or drives it in
//!   headless Chromium (see `web.rs`; the static server is `serve.rs`).
//! - `soak`: the simulator over fresh seeds for some minutes on every core (see
//!   `soak.rs`).

mod board;
mod cmd;
mod elf;
mod nostd;
mod qemu;
mod serve;
mod size;
mod soak;
mod web;

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask <command>

commands:
  nostd          build the core with --no-default-features for thumbv6m-none-eabi,
                 thumbv7em-none-eabihf, riscv32imc-unknown-none-elf and
                 wasm32-unknown-unknown (and with --features serde,defmt for
                 thumbv7em-none-eabihf); check that no
                 dependency enables `std` or `alloc`; link xtask/nostd-check, a
                 #![no_std] program that drives the core with no global allocator,
                 for each target. Installs missing targets with rustup.
  size [--sections]
                 flash (text + rodata + data) and static RAM (data + bss) of
                 xtask/nostd-check per target: the core's footprint on its own
  qemu-cluster [--boards 3|4|5]
                 build embedded/qemu (the mps2-an385 firmware) and the hub, boot that
                 many boards as QEMU processes on one emulated Ethernet, show their
                 defmt logs with a board prefix, and check election, commit and
                 agreement, a killed leader's replacement within 2 election timeouts,
                 restart from flash and catch-up, cut-off and heal without disturbing
                 the leader, commit under 20 % frame loss (needs qemu-system-arm and
                 defmt-print; exits non-zero if a check fails)
  board          build embedded/nucleo-f429zi (the NUCLEO-F429ZI firmware, its own
                 workspace, thumbv7em-none-eabihf) and print its flash and RAM
  web [--port N] [--out DIR] [--no-serve]
                 build the interactive model (web/: the coracle-web crate for
                 wasm32-unknown-unknown, wasm-bindgen's glue, web/www) into
                 target/web (or DIR) and serve it on http://127.0.0.1:8720/ (or N)
                 until Ctrl-C. Needs `cargo install wasm-bindgen-cli --version X`,
                 X the wasm-bindgen of Cargo.lock
  web-test [--screenshots DIR]
                 build the page and drive it in headless Chromium
                 (web/tests/page.test.mjs: Node, playwright-core from `cd web &&
                 npm ci`, /usr/bin/chromium or CORACLE_CHROMIUM); screenshots go to
                 target/web-screenshots. Prints SKIPPED and succeeds when a tool is
                 missing, unless CORACLE_BROWSER_REQUIRED=1
  soak [--minutes N] [sim options]
                 run the simulator over fresh seeds for N minutes (default 10) on every
                 core: 3/5/7 nodes, 50000 steps, every fault class, every history
                 checked for linearizability; prints the totals, the seed range and the
                 replay command of every failing seed; fails if any seed failed. Run it
                 before every submission that touches the core or a host.
  help           this message
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match command {
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        "nostd" => nostd::run(rest),
        "size" => size::run(rest),
        "qemu-cluster" => qemu::run(rest),
        "board" => board::run(rest),
        "web" => web::run(rest),
        "web-test" => web::test(rest),
        "soak" => soak::run(rest),
        other => {
            eprint!("error: unknown command `{other}`\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
