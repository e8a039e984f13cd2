//! `cargo xtask` from a test: the checks that need more than a test binary (the QEMU
//! boards, the interactive model in a browser) are xtask commands that `cargo test
//! --workspace` runs when their tools are there.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, ExitStatus};

/// Runs `cargo xtask <args>` from the workspace root with `target_dir` as its target
/// folder: a folder of its own, since the outer `cargo test` may hold the lock of the
/// workspace's. Its output goes to the terminal. Panics if cargo cannot start.
pub fn cargo_xtask<I, S>(target_dir: &Path, args: I) -> ExitStatus
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["run", "--quiet", "-p", "xtask", "--"])
        .args(args)
        .status()
        .expect("cargo runs")
}
