//! The QEMU cluster check of issue 7, run by `cargo test --workspace` when
//! the tools are there: `cargo xtask qemu-cluster --boards 3` (5 with
//! `CORACLE_QEMU_BOARDS=5`).
//!
//! It needs `qemu-system-arm`, `defmt-print` and the `thumbv7m-none-eabi`
//! target. Without them it prints `SKIPPED` and passes, unless
//! `CORACLE_QEMU_REQUIRED=1` (set by `.ci/run`), which makes a skip a
//! failure.

use coracle_tests::xtask::cargo_xtask;
use std::path::Path;
use std::process::Command;

fn available(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn target_installed(target: &str) -> bool {
    let Ok(out) = Command::new("rustc").args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .exists()
}

#[test]
fn qemu_cluster_elects_commits_survives_a_kill_and_a_partition() {
    let required = std::env::var("CORACLE_QEMU_REQUIRED").is_ok_and(|v| v == "1");
    let mut missing = Vec::new();
    if !available("qemu-system-arm", "--version") {
        missing.push("qemu-system-arm (apt-get install -y qemu-system-arm)");
    }
    if !available("defmt-print", "--version") {
        missing.push("defmt-print (cargo install defmt-print)");
    }
    if !target_installed("thumbv7m-none-eabi") {
        missing.push("the thumbv7m-none-eabi target (rustup target add thumbv7m-none-eabi)");
    }
    if !missing.is_empty() {
        let message = format!("QEMU cluster check SKIPPED: missing {}", missing.join(", "));
        assert!(!required, "{message}, and CORACLE_QEMU_REQUIRED=1");
        // Straight to the process's stderr: the test harness hides `eprintln!` of a test
        // that passes, and a skip must not look like a pass.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{message}");
        return;
    }
    let boards = std::env::var("CORACLE_QEMU_BOARDS").unwrap_or_else(|_| "3".into());
    // A target folder of its own: the outer `cargo test` may hold the lock
    // of the workspace's.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-cluster");
    let status = cargo_xtask(&target, ["qemu-cluster", "--boards", &boards]);
    assert!(
        status.success(),
        "cargo xtask qemu-cluster failed: {status}"
    );
}
