//! Runs the deterministic simulator over many seeds, or replays one seed with a trace.
//!
//! ```text
//! sim --seeds N [--start S] [--steps M] [--nodes K] [--faults LIST] [--clients C]
//!     [--keys K] [--bug vote-amnesia|lose-durable|stale-reads|unconfirmed-reads|early-ack]
//!     [--no-lin] [--verbose]
//! sim --seed S [same options] [--trace]
//! ```
//!
//! The last line of a multi-seed run is exactly
//! `seeds: N, events: E, violations: V, non-linearizable: L`; the exit code is 1 if `V` or
//! `L` is not zero. Each failing seed prints the command that replays it.

use coracle_tests::sim::{Bug, Cluster, Faults, Linearizability, RunReport, SimOptions};
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: sim --seeds N [--start S] [options]     run seeds S..S+N (S defaults to 0)
       sim --seed S [--trace] [options]         run (and trace) one seed
options:
  --steps M          events with faults before everything heals (default 20000)
  --nodes K          cluster size, 1 to 9 (default 5)
  --faults LIST      fault classes: all, none, or a comma list of drop, dup, reorder,
                     delay, partition, asym, partial, crash, torn, slow-disk,
                     disk-fail, slow-reads, pause, skew, membership, transfer,
                     snapshot; `-name` removes one (default all);
                     lose-tail (not in all: a restart loses entries it acknowledged,
                     which every other node holds)
  --clients C        simulated clients (default 3)
  --keys K           keys of the workload (default 3)
  --bug NAME         break the host on purpose: vote-amnesia, lose-durable,
                     stale-reads, unconfirmed-reads or early-ack (the oracles or
                     the checker must then fail)
  --no-lin           skip the linearizability check
  --verbose          print a line for every seed
  --trace            print every event and every node's state (with --seed)";

struct Args {
    seeds: u64,
    start: u64,
    single: Option<u64>,
    trace: bool,
    verbose: bool,
    options: SimOptions,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 1,
        start: 0,
        single: None,
        trace: false,
        verbose: false,
        options: SimOptions::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        fn number(name: &str, v: String) -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{name}: `{v}` is not a number"))
        }
        match arg.as_str() {
            "--seeds" => args.seeds = number("--seeds", value("--seeds")?)?,
            "--start" => args.start = number("--start", value("--start")?)?,
            "--seed" => args.single = Some(number("--seed", value("--seed")?)?),
            "--steps" => args.options.steps = number("--steps", value("--steps")?)?,
            "--nodes" => {
                let n = number("--nodes", value("--nodes")?)?;
                if !(1..=9).contains(&n) {
                    return Err("--nodes must be between 1 and 9".into());
                }
                args.options.nodes = n as usize;
            }
            "--faults" => args.options.faults = Faults::parse(&value("--faults")?)?,
            "--clients" => {
                args.options.clients = number("--clients", value("--clients")?)? as usize
            }
            "--keys" => args.options.keys = number("--keys", value("--keys")?)?.max(1),
            "--bug" => args.options.bug = Some(Bug::parse(&value("--bug")?)?),
            "--no-lin" => args.options.check_linearizability = false,
            "--trace" => args.trace = true,
            "--verbose" => args.verbose = true,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if args.trace && args.single.is_none() {
        return Err("--trace needs --seed S".into());
    }
    Ok(args)
}

/// The command that replays `seed` with these options.
fn replay_command(seed: u64, o: &SimOptions) -> String {
    let mut cmd = format!(
        "cargo run --release -p coracle-tests --bin sim -- --seed {seed} --steps {} --nodes {} \
         --faults {} --clients {} --keys {}",
        o.steps, o.nodes, o.faults, o.clients, o.keys
    );
    if let Some(bug) = o.bug {
        cmd.push_str(&format!(" --bug {bug}"));
    }
    if !o.check_linearizability {
        cmd.push_str(" --no-lin");
    }
    cmd.push_str(" --trace");
    cmd
}

/// One seed: the report, and the time spent simulating and checking.
fn run_one(
    seed: u64,
    options: &SimOptions,
    trace: Option<Box<dyn Write>>,
) -> (RunReport, Duration, Duration) {
    let start = Instant::now();
    let mut cluster = Cluster::new(seed, options.clone(), trace);
    cluster.run_faults(options.steps);
    cluster.heal_and_check_liveness();
    let simulated = start.elapsed();
    let report = cluster.finish();
    (report, simulated, start.elapsed() - simulated)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let seeds: Vec<u64> = match args.single {
        Some(s) => vec![s],
        None => (args.start..args.start.saturating_add(args.seeds)).collect(),
    };
    let (mut events, mut violations, mut non_linearizable, mut unknown) = (0u64, 0u64, 0u64, 0u64);
    let (mut sim_time, mut check_time) = (Duration::ZERO, Duration::ZERO);
    let mut failed = Vec::new();
    for &seed in &seeds {
        let trace: Option<Box<dyn Write>> = if args.trace {
            Some(Box::new(BufWriter::new(std::io::stdout())))
        } else {
            None
        };
        let (report, s, c) = run_one(seed, &args.options, trace);
        sim_time += s;
        check_time += c;
        events += report.events;
        violations += report.violations.len() as u64;
        match report.linearizability {
            Linearizability::NotLinearizable(_) => non_linearizable += 1,
            Linearizability::Unknown(_) => unknown += 1,
            Linearizability::Linearizable | Linearizability::Skipped => {}
        }
        if !report.is_ok() {
            println!("FAIL {report}");
            println!("  replay: {}", replay_command(seed, &args.options));
            failed.push(seed);
        } else if args.verbose || args.single.is_some() {
            println!("ok   {report}");
        }
    }
    let rate = events as f64 / sim_time.as_secs_f64().max(1e-9);
    println!(
        "simulation: {:.2} s ({:.0} events/s on one core); linearizability checks: {:.2} s; \
         undecided histories: {unknown}",
        sim_time.as_secs_f64(),
        rate,
        check_time.as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failing seeds: {failed:?}");
    }
    println!(
        "seeds: {}, events: {events}, violations: {violations}, non-linearizable: {non_linearizable}",
        seeds.len()
    );
    if violations > 0 || non_linearizable > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
