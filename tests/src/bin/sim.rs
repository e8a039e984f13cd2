//! Runs the deterministic simulator over many seeds, soaks it for a number of minutes over
//! fresh seeds, replays one seed with a trace, or checks a saved client history.
//!
//! ```text
//! sim --seeds N [--start S] [options]          seeds S..S+N, on every core
//! sim --minutes M [--start S] [options]        fresh seeds for M minutes, on every core
//! sim --seed S [--trace] [--save-history FILE] [options]
//! sim --check-history FILE [--budget B]
//! ```
//!
//! A multi-seed run ends with a summary whose last line is exactly
//! `seeds: N, events: E, violations: V, non-linearizable: L, undecided: U`; the exit code
//! is 1 if any seed failed: a safety or liveness violation, a panic, a history found not
//! linearizable, or one the checker could not decide (an unchecked history is not a pass).
//! Each failing seed prints the command that replays it.

use coracle_tests::linearizability::{self, Budget, History};
use coracle_tests::oracle::Violation;
use coracle_tests::sim::rng::mix64;
use coracle_tests::sim::{Bug, Cluster, Faults, Linearizability, RunReport, SimOptions};
use std::io::{BufWriter, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
usage: sim --seeds N [--start S] [options]     run seeds S..S+N (S defaults to 0)
       sim --minutes M [--start S] [options]   soak: run fresh seeds for M minutes (S
                                               defaults to a random base, printed)
       sim --seed S [--trace] [options]        run (and trace) one seed
       sim --check-history FILE [--budget B]   check a history saved by --save-history
options:
  --steps M          events with faults before everything heals (default 20000; 50000
                     with --minutes)
  --nodes K          cluster size, 1 to 9, or a comma list such as 3,5,7 that seeds take
                     in turn (seed % count) (default 5; 3,5,7 with --minutes)
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
  --budget B         search steps per key for the linearizability check (default 2000000)
  --threads T        worker threads (default: one per core)
  --verbose          print a line for every seed
  --trace            print every event and every node's state (with --seed)
  --save-history F   write the client history to F (with --seed), for --check-history";

/// The node counts of a soak when `--nodes` is not given.
const SOAK_NODES: [usize; 3] = [3, 5, 7];
/// The events per seed of a soak when `--steps` is not given.
const SOAK_STEPS: u64 = 50_000;
/// Seeds a soak may hand out from its base (far more than any soak runs): the seed counter
/// and `base + seeds` in its summary must not overflow.
const SOAK_ROOM: u64 = 1 << 40;
/// Seconds between two progress lines of a soak.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

enum Mode {
    Seeds {
        start: u64,
        count: u64,
    },
    Soak {
        minutes: f64,
        start: Option<u64>,
    },
    Single {
        seed: u64,
        trace: bool,
        save_history: Option<PathBuf>,
    },
    Check {
        path: PathBuf,
    },
}

struct Args {
    mode: Mode,
    /// The options; `nodes` is overridden per seed from `nodes`.
    options: SimOptions,
    /// The cluster sizes seeds take in turn.
    nodes: Vec<usize>,
    threads: usize,
    verbose: bool,
}

impl Args {
    /// The options of `seed`.
    fn options_for(&self, seed: u64) -> SimOptions {
        let mut options = self.options.clone();
        options.nodes = self.nodes[(seed % self.nodes.len() as u64) as usize];
        options
    }

    /// The cluster sizes as `--nodes` takes them.
    fn nodes_text(&self) -> String {
        let sizes: Vec<String> = self.nodes.iter().map(usize::to_string).collect();
        sizes.join(",")
    }
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut seeds = None;
    let mut start = None;
    let mut single = None;
    let mut minutes = None;
    let mut check = None;
    let mut save_history = None;
    let mut steps = None;
    let mut nodes = None;
    let mut trace = false;
    let mut verbose = false;
    let mut threads = None;
    let mut options = SimOptions::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--seeds" => seeds = Some(number("--seeds", &value("--seeds")?)?),
            "--start" => start = Some(number("--start", &value("--start")?)?),
            "--seed" => single = Some(number("--seed", &value("--seed")?)?),
            "--minutes" => minutes = Some(parse_minutes(&value("--minutes")?)?),
            "--check-history" => check = Some(PathBuf::from(value("--check-history")?)),
            "--save-history" => save_history = Some(PathBuf::from(value("--save-history")?)),
            "--steps" => steps = Some(number("--steps", &value("--steps")?)?),
            "--nodes" => nodes = Some(parse_nodes(&value("--nodes")?)?),
            "--faults" => options.faults = Faults::parse(&value("--faults")?)?,
            "--clients" => {
                options.clients = usize::try_from(number("--clients", &value("--clients")?)?)
                    .map_err(|_| "--clients: too many".to_string())?
            }
            "--keys" => options.keys = number("--keys", &value("--keys")?)?.max(1),
            "--bug" => options.bug = Some(Bug::parse(&value("--bug")?)?),
            "--no-lin" => options.check_linearizability = false,
            "--budget" => options.linearizability_budget = number("--budget", &value("--budget")?)?,
            "--threads" => {
                let t = number("--threads", &value("--threads")?)?;
                if !(1..=1024).contains(&t) {
                    return Err("--threads must be between 1 and 1024".into());
                }
                threads = Some(t as usize);
            }
            "--trace" => trace = true,
            "--verbose" => verbose = true,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let modes = [
        seeds.is_some(),
        minutes.is_some(),
        single.is_some(),
        check.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() > 1 {
        return Err("give only one of --seeds, --minutes, --seed and --check-history".into());
    }
    if trace && single.is_none() {
        return Err("--trace needs --seed S".into());
    }
    if save_history.is_some() && single.is_none() {
        return Err("--save-history needs --seed S".into());
    }
    if start.is_some() && single.is_some() {
        return Err("--start goes with --seeds or --minutes, not --seed".into());
    }
    if minutes.is_some() && start.is_some_and(|s| s.checked_add(SOAK_ROOM).is_none()) {
        return Err(format!(
            "--start leaves no room for a soak's seeds (at most {})",
            u64::MAX - SOAK_ROOM
        ));
    }
    let soak = minutes.is_some();
    options.steps = steps.unwrap_or(if soak { SOAK_STEPS } else { options.steps });
    let nodes = nodes.unwrap_or_else(|| {
        if soak {
            SOAK_NODES.to_vec()
        } else {
            vec![options.nodes]
        }
    });
    let mode = if let Some(path) = check {
        Mode::Check { path }
    } else if let Some(minutes) = minutes {
        Mode::Soak { minutes, start }
    } else if let Some(seed) = single {
        Mode::Single {
            seed,
            trace,
            save_history,
        }
    } else {
        let start = start.unwrap_or(0);
        let count = seeds.unwrap_or(1);
        if start.checked_add(count).is_none() {
            return Err("--start + --seeds is past the last seed".into());
        }
        Mode::Seeds { start, count }
    };
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    Ok(Args {
        mode,
        options,
        nodes,
        threads,
        verbose,
    })
}

fn number(name: &str, v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("{name}: `{v}` is not a number"))
}

/// `--minutes`: a positive number, fractions allowed (`0.5`), at most a week.
fn parse_minutes(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(m) if m > 0.0 && m <= 7.0 * 24.0 * 60.0 => Ok(m),
        _ => Err(format!(
            "--minutes: `{v}` is not a number of minutes (more than 0, at most a week)"
        )),
    }
}

/// `--nodes`: `5` or `3,5,7`, each from 1 to 9.
fn parse_nodes(v: &str) -> Result<Vec<usize>, String> {
    v.split(',')
        .map(|n| match n.trim().parse::<usize>() {
            Ok(n @ 1..=9) => Ok(n),
            _ => Err(format!(
                "--nodes: `{n}` is not a cluster size (1 to 9; a list: 3,5,7)"
            )),
        })
        .collect()
}

/// What one seed found.
struct SeedResult {
    report: Option<RunReport>,
    simulated: Duration,
    checked: Duration,
}

/// Runs one seed; `report` is `None` if the simulator panicked (a bug in the core or the
/// simulator; the panic message went to stderr).
fn run_one(
    seed: u64,
    options: &SimOptions,
    trace: Option<Box<dyn Write>>,
    save_history: Option<&Path>,
) -> SeedResult {
    let start = Instant::now();
    let mut simulated = Duration::ZERO;
    let report = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut cluster = Cluster::new(seed, options.clone(), trace);
        cluster.run_faults(options.steps);
        cluster.heal_and_check_liveness();
        if let Some(path) = save_history {
            let text = format!("# {}\n{}", options.replay_command(seed), cluster.history());
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
        simulated = start.elapsed();
        cluster.finish()
    }))
    .ok();
    SeedResult {
        report,
        simulated,
        checked: start.elapsed().saturating_sub(simulated),
    }
}

/// The totals of a set of seeds.
#[derive(Default)]
struct Totals {
    seeds: u64,
    events: u64,
    safety: u64,
    liveness: u64,
    panics: u64,
    non_linearizable: u64,
    undecided: u64,
    simulated: Duration,
    checked: Duration,
    /// The failing seeds with their replay commands.
    failed: Vec<(u64, String)>,
}

impl Totals {
    /// Counts one seed; returns the lines to print for it (empty for a passing seed unless
    /// `verbose`).
    fn add(
        &mut self,
        seed: u64,
        options: &SimOptions,
        result: SeedResult,
        verbose: bool,
    ) -> String {
        self.seeds += 1;
        self.simulated += result.simulated;
        self.checked += result.checked;
        let Some(report) = result.report else {
            self.panics += 1;
            let replay = options.replay_command(seed);
            self.failed.push((seed, replay.clone()));
            return format!("FAIL seed {seed}: panicked\n  replay: {replay}\n");
        };
        self.events += report.events;
        for violation in &report.violations {
            match violation {
                Violation::Liveness { .. } => self.liveness += 1,
                _ => self.safety += 1,
            }
        }
        match report.linearizability {
            Linearizability::NotLinearizable(_) => self.non_linearizable += 1,
            Linearizability::Unknown(_) => self.undecided += 1,
            Linearizability::Linearizable | Linearizability::Skipped => {}
        }
        if !report.is_ok() {
            let replay = options.replay_command(seed);
            self.failed.push((seed, replay.clone()));
            format!("FAIL {report}\n  replay: {replay}\n")
        } else if verbose {
            format!("ok   {report}\n")
        } else {
            String::new()
        }
    }

    fn failures(&self) -> u64 {
        self.failed.len() as u64
    }
}

/// Runs the seeds that `next` hands out on `threads` workers, printing each failing seed
/// (and with `verbose` each seed) as it ends; `progress` is called about every minute.
fn run_seeds(
    args: &Args,
    next: &(dyn Fn() -> Option<u64> + Sync),
    progress: &(dyn Fn(&Totals) + Sync),
) -> Totals {
    /// Counts a worker as finished when it ends, also by a panic (which the scope then
    /// passes on), so the progress loop below always ends.
    struct Finished<'a>(&'a AtomicU64);
    impl Drop for Finished<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let totals = Mutex::new(Totals::default());
    let finished = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..args.threads {
            scope.spawn(|| {
                let _finished = Finished(&finished);
                while let Some(seed) = next() {
                    let options = args.options_for(seed);
                    let result = run_one(seed, &options, None, None);
                    let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
                    let lines = totals.add(seed, &options, result, args.verbose);
                    if !lines.is_empty() {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(lines.as_bytes());
                        let _ = out.flush();
                    }
                }
            });
        }
        let mut last = Instant::now();
        while finished.load(Ordering::Relaxed) < args.threads as u64 {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                progress(&totals.lock().unwrap_or_else(|e| e.into_inner()));
            }
        }
    });
    let mut totals = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    totals.failed.sort_unstable();
    totals
}

/// A seed base no earlier run is likely to have used (40 bits from the clock, mixed),
/// with [`SOAK_ROOM`] seeds after it.
fn fresh_base() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix64(nanos) & (SOAK_ROOM - 1)
}

fn print_summary(totals: &Totals, wall: Duration, threads: usize) {
    let per_thread = totals.events as f64 / totals.simulated.as_secs_f64().max(1e-9);
    let overall = totals.events as f64 / wall.as_secs_f64().max(1e-9);
    println!(
        "simulation: {:.1} s of {threads} thread(s) ({:.0} events/s, {:.0} per thread); \
         linearizability checks: {:.2} s; undecided histories: {}",
        totals.simulated.as_secs_f64(),
        overall,
        per_thread,
        totals.checked.as_secs_f64(),
        totals.undecided
    );
    println!(
        "safety violations: {}, liveness failures: {}, panics: {}, non-linearizable: {}, \
         undecided: {}",
        totals.safety, totals.liveness, totals.panics, totals.non_linearizable, totals.undecided
    );
    if !totals.failed.is_empty() {
        println!("failing seeds ({}), replay each with:", totals.failed.len());
        for (_, replay) in &totals.failed {
            println!("  {replay}");
        }
    }
    println!(
        "seeds: {}, events: {}, violations: {}, non-linearizable: {}, undecided: {}",
        totals.seeds,
        totals.events,
        totals.safety + totals.liveness + totals.panics,
        totals.non_linearizable,
        totals.undecided
    );
}

fn exit_code(totals: &Totals) -> ExitCode {
    if totals.failures() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `--seeds N`: seeds `start..start+count`, each exactly once.
fn seeds(args: &Args, start: u64, count: u64) -> ExitCode {
    let next_seed = AtomicU64::new(start);
    let end = start + count;
    let next = || {
        let seed = next_seed.fetch_add(1, Ordering::Relaxed);
        (seed < end).then_some(seed)
    };
    let began = Instant::now();
    let totals = run_seeds(args, &next, &|_| {});
    print_summary(&totals, began.elapsed(), args.threads);
    exit_code(&totals)
}

/// `--minutes M`: fresh seeds from a base, until the time is up.
fn soak(args: &Args, minutes: f64, start: Option<u64>) -> ExitCode {
    let base = start.unwrap_or_else(fresh_base);
    let flags = args.options.sim_flags();
    println!(
        "soak: {minutes} min on {} thread(s), seeds from {base} up, --nodes {} {flags}",
        args.threads,
        args.nodes_text()
    );
    let began = Instant::now();
    let deadline = began + Duration::from_secs_f64(minutes * 60.0);
    let next_seed = AtomicU64::new(base);
    let next = || (Instant::now() < deadline).then(|| next_seed.fetch_add(1, Ordering::Relaxed));
    let progress = |t: &Totals| {
        println!(
            "soak: {:.1} min, {} seeds, {} events, {} failing",
            began.elapsed().as_secs_f64() / 60.0,
            t.seeds,
            t.events,
            t.failures()
        );
    };
    let totals = run_seeds(args, &next, &progress);
    let wall = began.elapsed();
    // Every seed handed out was run: the seeds are exactly base..base+seeds.
    println!(
        "soak: {:.1} min, seeds {base}..{} ({} seeds); run them again with:\n  \
         cargo run --release -p coracle-tests --bin sim -- --seeds {} --start {base} \
         --nodes {} {flags}",
        wall.as_secs_f64() / 60.0,
        base + totals.seeds,
        totals.seeds,
        totals.seeds,
        args.nodes_text()
    );
    print_summary(&totals, wall, args.threads);
    exit_code(&totals)
}

/// `--seed S`: one seed, with its report, optionally traced.
fn single(args: &Args, seed: u64, trace: bool, save_history: Option<&Path>) -> ExitCode {
    let options = args.options_for(seed);
    let trace: Option<Box<dyn Write>> = if trace {
        Some(Box::new(BufWriter::new(std::io::stdout())))
    } else {
        None
    };
    let began = Instant::now();
    let result = run_one(seed, &options, trace, save_history);
    let mut totals = Totals::default();
    let lines = totals.add(seed, &options, result, true);
    print!("{lines}");
    print_summary(&totals, began.elapsed(), 1);
    exit_code(&totals)
}

/// `--check-history FILE`: the verdict on a saved history.
fn check_history(path: &Path, budget: u64) -> ExitCode {
    let history: History = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            text.parse()
                .map_err(|e: linearizability::ParseHistoryError| e.to_string())
        }) {
        Ok(history) => history,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let began = Instant::now();
    let result = linearizability::check(&history, Budget::steps(budget));
    println!(
        "{}: {} operations, checked in {:.2} s: {result}",
        path.display(),
        history.len(),
        began.elapsed().as_secs_f64()
    );
    match result {
        linearizability::CheckResult::Linearizable => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match &args.mode {
        Mode::Seeds { start, count } => seeds(&args, *start, *count),
        Mode::Soak { minutes, start } => soak(&args, *minutes, *start),
        Mode::Single {
            seed,
            trace,
            save_history,
        } => single(&args, *seed, *trace, save_history.as_deref()),
        Mode::Check { path } => check_history(path, args.options.linearizability_budget),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Args, String> {
        parse_args(line.split_whitespace().map(String::from))
    }

    #[test]
    fn a_soak_rotates_cluster_sizes_over_long_runs() {
        let args = parse("--minutes 2").unwrap();
        assert!(matches!(args.mode, Mode::Soak { start: None, .. }));
        assert_eq!(args.nodes, SOAK_NODES);
        assert_eq!(args.options.steps, SOAK_STEPS);
        assert_eq!(args.options.faults, Faults::ALL);
        assert!(args.threads >= 1);
        let sizes: Vec<usize> = (9..15).map(|seed| args.options_for(seed).nodes).collect();
        assert_eq!(sizes, [3, 5, 7, 3, 5, 7]);
        // The replay command of a seed names its own cluster size.
        assert!(args
            .options_for(10)
            .replay_command(10)
            .contains("--nodes 5 --steps 50000"));

        let args = parse("--minutes 0.5 --start 77 --nodes 9 --steps 1000 --threads 3").unwrap();
        assert!(matches!(
            args.mode,
            Mode::Soak {
                start: Some(77),
                ..
            }
        ));
        assert_eq!(
            (args.nodes.as_slice(), args.options.steps, args.threads),
            (&[9][..], 1000, 3)
        );
    }

    #[test]
    fn seeds_keep_their_defaults() {
        let args = parse("--seeds 500 --start 10000 --nodes 3,5").unwrap();
        assert!(matches!(
            args.mode,
            Mode::Seeds {
                start: 10_000,
                count: 500
            }
        ));
        assert_eq!(args.options.steps, SimOptions::default().steps);
        assert_eq!(args.nodes_text(), "3,5");
        let args = parse("").unwrap();
        assert!(matches!(args.mode, Mode::Seeds { start: 0, count: 1 }));
        assert_eq!(args.nodes, [5]);
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        for (line, wanted) in [
            ("--minutes 0", "not a number of minutes"),
            ("--minutes -3", "not a number of minutes"),
            ("--minutes NaN", "not a number of minutes"),
            ("--minutes 1e9", "not a number of minutes"),
            ("--minutes", "needs a value"),
            ("--nodes 0", "not a cluster size"),
            ("--nodes 3,,5", "not a cluster size"),
            ("--nodes 10", "not a cluster size"),
            ("--threads 0", "between 1 and 1024"),
            ("--seeds 5 --minutes 1", "only one of"),
            ("--seed 5 --check-history x", "only one of"),
            ("--seed 5 --start 3", "--start goes with"),
            (
                "--seeds 2 --start 18446744073709551615",
                "past the last seed",
            ),
            (
                "--minutes 1 --start 18446744073709551000",
                "no room for a soak's seeds",
            ),
            ("--seeds 2 --trace", "--trace needs --seed"),
            (
                "--minutes 1 --save-history h.txt",
                "--save-history needs --seed",
            ),
            ("--steps many", "is not a number"),
            ("--faults drop,bogus", "bogus"),
            ("--bug nonsense", "unknown bug"),
            ("--frobnicate", "unknown argument"),
        ] {
            match parse(line) {
                Err(e) => assert!(e.contains(wanted), "{line}: {e}"),
                Ok(_) => panic!("{line}: accepted"),
            }
        }
    }

    #[test]
    fn fresh_bases_leave_room_for_many_seeds() {
        let base = fresh_base();
        assert!(base < SOAK_ROOM);
        assert!(base.checked_add(SOAK_ROOM).is_some());
    }
}
