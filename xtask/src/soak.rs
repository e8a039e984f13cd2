//! `cargo xtask soak [--minutes N] [sim options]`: the simulator's soak, to run before
//! every submission that touches the core or a host. It builds and runs
//! `cargo run --release -p coracle-tests --bin sim -- --minutes N ...`: fresh seeds for
//! N minutes (10 unless given) on one worker per core, 3/5/7 nodes, 50,000 steps, every
//! fault class, every history checked for linearizability; it ends with the totals and
//! the replay command of every failing seed, and fails if any seed failed.

use crate::cmd::{self, Result};

/// Minutes of soak when `--minutes` is not given.
pub const DEFAULT_MINUTES: &str = "10";

/// The arguments for `sim`: `args`, with `--minutes` added if missing.
fn sim_args(args: &[String]) -> Vec<String> {
    let mut sim = Vec::with_capacity(args.len() + 2);
    if !args.iter().any(|a| a == "--minutes") {
        sim.extend(["--minutes".to_string(), DEFAULT_MINUTES.to_string()]);
    }
    sim.extend(args.iter().cloned());
    sim
}

/// Runs the soak; `sim` checks the options and prints its usage for a bad one.
pub fn run(args: &[String]) -> Result<()> {
    let mut command = cmd::cargo();
    command
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "coracle-tests",
            "--bin",
            "sim",
            "--",
        ])
        .args(sim_args(args));
    cmd::run_inherited(&mut command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn minutes_default_to_ten_and_the_rest_goes_to_sim() {
        assert_eq!(sim_args(&[]), strings(&["--minutes", "10"]));
        assert_eq!(
            sim_args(&strings(&["--nodes", "5"])),
            strings(&["--minutes", "10", "--nodes", "5"])
        );
        assert_eq!(
            sim_args(&strings(&["--minutes", "2", "--start", "7"])),
            strings(&["--minutes", "2", "--start", "7"])
        );
    }
}
