//! `cargo xtask qemu-cluster [--boards 3|5]`: the firmware of `embedded/qemu`
//! on several QEMU `mps2-an385` boards, each a separate process, networked
//! through the hub of `coracle-embedded` (`-netdev dgram` over unix sockets),
//! with their defmt logs decoded by `defmt-print` and shown with a board
//! prefix, and the checks of issue 7:
//!
//! 1. a leader is elected (every board agrees on it and its term);
//! 2. entries commit, and every board reports the same state digest at the
//!    same applied index;
//! 3. the leader's QEMU process is killed (SIGKILL) and a new leader is
//!    elected within 2 election timeouts;
//! 4. the killed board restarts from its flash (its journal file) and
//!    catches up;
//! 5. a follower cut off by the hub and healed rejoins without disturbing
//!    the leader (pre-vote: no board's term moves);
//! 6. entries still commit while the hub drops 20 % of the frames;
//! 7. every board's journal compacted (snapshot of its counter table, log
//!    rewritten into the other flash bank: a `compacted` line) at least
//!    once, and the cluster kept committing past the highest of those
//!    first compaction points: the boards run indefinitely;
//! 8. a follower killed after its journal compacted restarts from the
//!    snapshot in its flash and catches up;
//! 9. the leader erases a bank of its flash journal (the firmware emulates
//!    a slow NOR erase: longer than an election timeout in all) while its
//!    loop keeps running: it sends heartbeats and logs status lines between
//!    `erase start` and `erase done`, and no board changes role or term
//!    meanwhile (issue 16: no I/O inside a node input);
//! 10. at the end, for every index two boards both applied, their digests
//!     agree (State Machine Safety across the whole run, snapshots a board
//!     restored from or installed included).
//!
//! Exits non-zero if any check fails; the logs stay in the run directory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::{self, Error, Result};

/// The firmware's target and binary.
pub const FIRMWARE_TARGET: &str = "thumbv7m-none-eabi";
const FIRMWARE_BIN: &str = "coracle-qemu";
/// The firmware's upper election timeout: 50 ticks of 10 ms, randomized to
/// [500, 1000) ms (`ELECTION_TICKS` in embedded/qemu/src/main.rs).
const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

/// The folder of the QEMU firmware.
pub fn firmware_dir() -> PathBuf {
    cmd::workspace_root().join("embedded").join("qemu")
}

/// Builds the QEMU firmware (release, `DEFMT_LOG=info`) into
/// `<target>/firmware` and returns the ELF's path.
pub fn build_firmware(target_dir: &Path) -> Result<PathBuf> {
    let out = target_dir.join("firmware");
    let mut build = cmd::cargo();
    build
        .current_dir(firmware_dir())
        .env("CARGO_TARGET_DIR", &out)
        .env("DEFMT_LOG", "info")
        .args(["build", "--release", "--target", FIRMWARE_TARGET]);
    cmd::run_inherited(&mut build)?;
    Ok(out.join(FIRMWARE_TARGET).join("release").join(FIRMWARE_BIN))
}

fn build_hub(target_dir: &Path) -> Result<PathBuf> {
    cmd::run_inherited(cmd::cargo().args([
        "build",
        "-p",
        "coracle-embedded",
        "--bin",
        "coracle-hub",
    ]))?;
    Ok(target_dir.join("debug").join("coracle-hub"))
}

/// The firmware's heartbeat interval: 10 ticks of 10 ms.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// One erase of a journal bank, as the erasing board logged it, with the
/// host's time of its lines.
#[derive(Clone, Debug)]
struct Erase {
    started: Instant,
    role: String,
    term: u64,
    /// Filled by the `erase done` line.
    ended: Option<Instant>,
    ms: u64,
    end_role: String,
    end_term: u64,
    /// Datagrams the board sent during the erase.
    sent_during: u64,
    /// Its `status` lines between start and done.
    status_lines: u64,
}

/// What the boards report, parsed from their log lines.
#[derive(Clone, Debug, Default)]
struct View {
    alive: bool,
    role: String,
    term: u64,
    leader: u64,
    commit: u64,
    applied: u64,
    restored_last: Option<u64>,
    /// Applied index -> digest of the table after it.
    digests: BTreeMap<u64, String>,
    /// Highest term any state or status line of this board showed.
    max_term: u64,
    /// `compacted` lines, and the index the first one compacted through.
    compactions: u64,
    first_compaction: Option<u64>,
    /// Snapshots installed from a leader (`installed snapshot` lines).
    installs: u64,
    /// The index of the snapshot the board booted from (0: none).
    restored_snapshot: Option<u64>,
    /// Erases of its journal's banks.
    erases: Vec<Erase>,
    /// When (host time) each of its `state` lines came: changes of role,
    /// term or leader.
    state_changes: Vec<Instant>,
}

/// `key=value` pairs after `word ` in `line`.
fn fields<'a>(line: &'a str, word: &str) -> Option<BTreeMap<&'a str, &'a str>> {
    let at = line.find(&format!(" {word} "))?;
    Some(
        line[at + word.len() + 2..]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect(),
    )
}

fn num(f: &BTreeMap<&str, &str>, key: &str) -> u64 {
    f.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl View {
    /// Takes in a log line that came at `at` (host time).
    fn update(&mut self, line: &str, at: Instant) {
        if let Some(f) = fields(line, "status") {
            self.role = f.get("role").unwrap_or(&"").to_string();
            self.term = num(&f, "term");
            self.leader = num(&f, "leader");
            self.commit = num(&f, "commit");
            self.applied = num(&f, "applied");
            if let Some(erase) = self.erases.last_mut().filter(|e| e.ended.is_none()) {
                erase.status_lines += 1;
            }
        } else if let Some(f) = fields(line, "state") {
            self.role = f.get("role").unwrap_or(&"").to_string();
            self.term = num(&f, "term");
            self.leader = num(&f, "leader");
            self.state_changes.push(at);
        } else if let Some(f) = fields(line, "erase start") {
            self.erases.push(Erase {
                started: at,
                role: f.get("role").unwrap_or(&"").to_string(),
                term: num(&f, "term"),
                ended: None,
                ms: 0,
                end_role: String::new(),
                end_term: 0,
                sent_during: 0,
                status_lines: 0,
            });
        } else if let Some(f) = fields(line, "erase done") {
            if let Some(erase) = self.erases.last_mut().filter(|e| e.ended.is_none()) {
                erase.ended = Some(at);
                erase.ms = num(&f, "ms");
                erase.end_role = f.get("role").unwrap_or(&"").to_string();
                erase.end_term = num(&f, "term");
                erase.sent_during = num(&f, "sent_during");
            }
        } else if let Some(f) = fields(line, "apply") {
            let index = num(&f, "index");
            self.applied = self.applied.max(index);
            if let Some(d) = f.get("digest") {
                self.digests.insert(index, d.to_string());
            }
        } else if let Some(f) = fields(line, "compacted") {
            let through = num(&f, "through");
            self.compactions += 1;
            self.first_compaction.get_or_insert(through);
            if let Some(d) = f.get("digest") {
                self.digests.insert(through, d.to_string());
            }
        } else if let Some(f) = fields(line, "installed") {
            let index = num(&f, "index");
            self.installs += 1;
            self.applied = self.applied.max(index);
            if let Some(d) = f.get("digest") {
                self.digests.insert(index, d.to_string());
            }
        } else if let Some(f) = fields(line, "restored") {
            self.restored_last = Some(num(&f, "last"));
            self.term = num(&f, "term");
            let snapshot = num(&f, "snapshot");
            self.restored_snapshot = Some(snapshot);
            if let (true, Some(d)) = (snapshot > 0, f.get("digest")) {
                self.digests.insert(snapshot, d.to_string());
            }
        }
        self.max_term = self.max_term.max(self.term);
    }
}

struct Board {
    qemu: Child,
    decoder: Child,
}

struct Cluster {
    boards: usize,
    dir: PathBuf,
    firmware: PathBuf,
    hub: Child,
    hub_in: ChildStdin,
    hub_out: BufReader<ChildStdout>,
    running: Vec<Option<Board>>,
    views: Vec<View>,
    events: Receiver<(usize, String)>,
    sender: Sender<(usize, String)>,
    print: Arc<Mutex<()>>,
}

impl Cluster {
    fn start(boards: usize, dir: PathBuf, firmware: PathBuf, hub: &Path) -> Result<Self> {
        let mut child = Command::new(hub)
            .args([
                "--dir",
                &dir.to_string_lossy(),
                "--boards",
                &boards.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::new(format!("could not start the hub {}: {e}", hub.display())))?;
        let hub_in = child.stdin.take().ok_or_else(|| Error::new("hub stdin"))?;
        let mut hub_out = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| Error::new("hub stdout"))?,
        );
        let mut first = String::new();
        let _ = hub_out.read_line(&mut first);
        if !first.starts_with("ok hub") {
            return Err(Error::new(format!("the hub did not start: {first}")));
        }
        println!("[hub] {}", first.trim_end());
        let (sender, events) = channel();
        Ok(Self {
            boards,
            dir,
            firmware,
            hub: child,
            hub_in,
            hub_out,
            running: (0..boards).map(|_| None).collect(),
            views: vec![View::default(); boards],
            events,
            sender,
            print: Arc::new(Mutex::new(())),
        })
    }

    fn hub(&mut self, command: &str) -> Result<String> {
        writeln!(self.hub_in, "{command}").map_err(|e| Error::new(format!("hub: {e}")))?;
        let mut answer = String::new();
        self.hub_out
            .read_line(&mut answer)
            .map_err(|e| Error::new(format!("hub: {e}")))?;
        let answer = answer.trim_end().to_string();
        println!("[hub] {command} -> {answer}");
        if answer.starts_with("ok") {
            Ok(answer)
        } else {
            Err(Error::new(format!("hub refused `{command}`: {answer}")))
        }
    }

    /// Starts board `n` (1-based); its flash files stay in its folder.
    fn boot(&mut self, n: usize) -> Result<()> {
        let home = self.dir.join(format!("board-{n}"));
        std::fs::create_dir_all(&home)
            .map_err(|e| Error::new(format!("{}: {e}", home.display())))?;
        let socket = self.dir.join(format!("board-{n}.sock"));
        let _ = std::fs::remove_file(&socket);
        let netdev = format!(
            "dgram,id=net0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            socket.display(),
            self.dir.join(format!("hub-{n}.sock")).display()
        );
        let nic = format!(
            "nic,netdev=net0,macaddr=02:c0:ac:00:{:02x}:{n:02x}",
            self.boards
        );
        let mut qemu = Command::new("qemu-system-arm")
            .args(["-machine", "mps2-an385", "-cpu", "cortex-m3", "-nographic"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .args(["-netdev", &netdev, "-net", &nic, "-kernel"])
            .arg(&self.firmware)
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::new(format!("could not start qemu-system-arm: {e}")))?;
        let out = qemu
            .stdout
            .take()
            .ok_or_else(|| Error::new("qemu stdout"))?;
        let err = qemu
            .stderr
            .take()
            .ok_or_else(|| Error::new("qemu stderr"))?;
        let mut decoder = Command::new("defmt-print")
            .arg("-e")
            .arg(&self.firmware)
            .args(["--log-format", "{t} {L} {s}"])
            .stdin(out)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::new(format!("could not start defmt-print: {e}")))?;
        let decoded = decoder
            .stdout
            .take()
            .ok_or_else(|| Error::new("defmt-print stdout"))?;
        let log_path = self.dir.join(format!("board-{n}.log"));
        for (stream, tag) in [
            (Box::new(decoded) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(err), "qemu: "),
        ] {
            let (sender, print, log_path) =
                (self.sender.clone(), self.print.clone(), log_path.clone());
            thread::spawn(move || {
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .ok();
                for line in BufReader::new(stream)
                    .lines()
                    .map_while(std::result::Result::ok)
                {
                    if let Ok(_guard) = print.lock() {
                        println!("[b{n}] {tag}{line}");
                    }
                    if let Some(log) = log.as_mut() {
                        let _ = writeln!(log, "{tag}{line}");
                    }
                    let _ = sender.send((n, line));
                }
            });
        }
        self.running[n - 1] = Some(Board { qemu, decoder });
        let view = &mut self.views[n - 1];
        *view = View {
            alive: true,
            max_term: view.max_term,
            ..View::default()
        };
        Ok(())
    }

    /// Kills board `n`'s QEMU with SIGKILL (a power cut).
    fn kill(&mut self, n: usize) {
        if let Some(mut board) = self.running[n - 1].take() {
            let _ = board.qemu.kill();
            let _ = board.qemu.wait();
            let _ = board.decoder.wait();
        }
        self.views[n - 1].alive = false;
    }

    fn alive(&self) -> impl Iterator<Item = (usize, &View)> {
        self.views
            .iter()
            .enumerate()
            .filter(|(_, v)| v.alive)
            .map(|(i, v)| (i + 1, v))
    }

    /// Takes in log lines until `done` holds (returns the time it took) or
    /// `limit` passes.
    fn wait(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if done(self) {
                return Some(start.elapsed());
            }
            let left = limit.checked_sub(start.elapsed())?;
            match self
                .events
                .recv_timeout(left.min(Duration::from_millis(50)))
            {
                Ok((n, line)) => {
                    if self.views[n - 1].alive {
                        self.views[n - 1].update(&line, Instant::now());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The leader every live board agrees on, with its term.
    fn agreed_leader(&self) -> Option<(usize, u64)> {
        let (_, first) = self.alive().next()?;
        let (leader, term) = (first.leader as usize, first.term);
        let agreed = leader != 0
            && self
                .views
                .get(leader - 1)
                .is_some_and(|v| v.alive && v.role == "leader")
            && self
                .alive()
                .all(|(_, v)| v.leader as usize == leader && v.term == term);
        agreed.then_some((leader, term))
    }

    /// The highest index every live board applied.
    fn common_applied(&self) -> u64 {
        self.alive().map(|(_, v)| v.applied).min().unwrap_or(0)
    }

    /// Indexes where two boards (live or not) applied different states.
    fn divergence(&self) -> Option<String> {
        for (a, va) in self.views.iter().enumerate() {
            for (b, vb) in self.views.iter().enumerate().skip(a + 1) {
                for (index, da) in &va.digests {
                    if let Some(db) = vb.digests.get(index) {
                        if da != db {
                            return Some(format!(
                                "board {} and board {} differ at index {index}: {da} vs {db}",
                                a + 1,
                                b + 1
                            ));
                        }
                    }
                }
            }
        }
        None
    }

    fn stop(mut self) {
        for n in 1..=self.boards {
            self.kill(n);
        }
        let _ = writeln!(self.hub_in, "quit");
        let _ = self.hub.wait();
    }
}

struct Report {
    results: Vec<(String, std::result::Result<String, String>)>,
}

impl Report {
    fn check(&mut self, name: &str, result: std::result::Result<String, String>) -> bool {
        let ok = result.is_ok();
        println!(
            "==> check {name}: {}",
            match &result {
                Ok(detail) => format!("PASS ({detail})"),
                Err(why) => format!("FAIL ({why})"),
            }
        );
        self.results.push((name.into(), result));
        ok
    }
}

fn scenario(c: &mut Cluster, report: &mut Report) -> Result<()> {
    let boards = c.boards;
    for n in 1..=boards {
        c.boot(n)?;
    }
    // 1. A leader.
    let elected = c.wait(Duration::from_secs(30), |c| c.agreed_leader().is_some());
    let Some((leader, term)) = c.agreed_leader() else {
        report.check(
            "leader elected",
            Err("no leader all boards agree on within 30 s".into()),
        );
        return Ok(());
    };
    report.check(
        "leader elected",
        Ok(format!(
            "board {leader} in term {term}, after {:.1} s",
            elected.unwrap_or_default().as_secs_f64()
        )),
    );

    // 2. Entries commit, same state at the same index.
    let target = 8;
    let ok = c
        .wait(Duration::from_secs(30), |c| c.common_applied() >= target)
        .is_some();
    let common = c.common_applied();
    let digests: Vec<String> = c
        .alive()
        .map(|(_, v)| v.digests.get(&common).cloned().unwrap_or_default())
        .collect();
    let same = digests.windows(2).all(|w| w[0] == w[1]) && c.divergence().is_none();
    if !report.check(
        "entries commit, same state at the same index",
        if ok && same {
            Ok(format!(
                "every board applied index {common} with digest {}",
                digests[0]
            ))
        } else {
            Err(format!(
                "common applied index {common}, digests {digests:?}, {:?}",
                c.divergence()
            ))
        },
    ) {
        return Ok(());
    }

    // 3. Kill the leader.
    let before_kill = common;
    c.kill(leader);
    println!("==> killed board {leader} (the leader, term {term})");
    let took = c.wait(Duration::from_secs(20), |c| {
        c.agreed_leader()
            .is_some_and(|(l, t)| l != leader && t > term)
    });
    let bound = 2 * ELECTION_TIMEOUT;
    let new = c.agreed_leader();
    let result = match (took, new) {
        (Some(took), Some((l, t))) if took <= bound => Ok(format!(
            "board {l} leads term {t} {} ms after the kill (bound {} ms = 2 election timeouts)",
            took.as_millis(),
            bound.as_millis()
        )),
        (Some(took), Some((l, t))) => Err(format!(
            "board {l} leads term {t} only {} ms after the kill (bound {} ms)",
            took.as_millis(),
            bound.as_millis()
        )),
        _ => Err("no new leader within 20 s".into()),
    };
    if !report.check("new leader after the leader's QEMU is killed", result) {
        return Ok(());
    }
    let Some((leader2, term2)) = new else {
        return Ok(());
    };

    // 4. Restart the killed board from its flash.
    c.boot(leader)?;
    let restored = c.wait(Duration::from_secs(10), |c| {
        c.views[leader - 1].restored_last.is_some()
    });
    let restored_last = c.views[leader - 1].restored_last.unwrap_or(0);
    // Let the new leader commit entries of its term, then ask the restarted
    // board to reach the commit index the others report by then.
    let _ = c.wait(ELECTION_TIMEOUT, |_| false);
    let goal = c
        .alive()
        .filter(|(n, _)| *n != leader)
        .map(|(_, v)| v.commit)
        .max()
        .unwrap_or(0)
        .max(restored_last + 1);
    let caught = c
        .wait(Duration::from_secs(30), |c| {
            c.views[leader - 1].applied >= goal && c.divergence().is_none()
        })
        .is_some();
    report.check(
        "the killed board restarts from its flash and catches up",
        if restored.is_some() && restored_last >= before_kill && caught && c.divergence().is_none() {
            Ok(format!(
                "board {leader} restored {restored_last} entries from flash (>= {before_kill} applied before the kill), \
                 then applied through {} (cluster commit was {goal})",
                c.views[leader - 1].applied
            ))
        } else {
            Err(format!(
                "restored={restored:?} last={restored_last} (need >= {before_kill}), applied {} of {goal}, {:?}",
                c.views[leader - 1].applied,
                c.divergence()
            ))
        },
    );

    // 5. Cut a follower off, heal it: the leader is not disturbed.
    let follower = (1..=boards).find(|&n| n != leader2).unwrap_or(1);
    let terms_before: Vec<u64> = c.views.iter().map(|v| v.max_term).collect();
    c.hub(&format!("cut {follower}"))?;
    let _ = c.wait(3 * ELECTION_TIMEOUT, |_| false);
    let cut_view = c.views[follower - 1].clone();
    c.hub(&format!("heal {follower}"))?;
    let goal = c.views[leader2 - 1].commit;
    let caught = c
        .wait(Duration::from_secs(20), |c| {
            c.views[follower - 1].applied >= goal
        })
        .is_some();
    let _ = c.wait(2 * ELECTION_TIMEOUT, |_| false);
    let terms_after: Vec<u64> = c.views.iter().map(|v| v.max_term).collect();
    let undisturbed =
        c.agreed_leader() == Some((leader2, term2)) && terms_after.iter().all(|&t| t <= term2);
    report.check(
        "a board cut off and healed rejoins without disturbing the leader",
        if caught && undisturbed {
            Ok(format!(
                "board {follower} cut for {} ms (role {} in term {} meanwhile), healed, applied through {goal}; \
                 board {leader2} still leads term {term2}; highest terms {terms_before:?} -> {terms_after:?}",
                (3 * ELECTION_TIMEOUT).as_millis(),
                cut_view.role,
                cut_view.term
            ))
        } else {
            Err(format!(
                "caught up: {caught}; leader now {:?} (was board {leader2} term {term2}); highest terms {terms_after:?}",
                c.agreed_leader()
            ))
        },
    );

    // 6. Commit under 20 % frame loss.
    c.hub("drop 20")?;
    let from = c.common_applied();
    let progressed = c.wait(Duration::from_secs(30), |c| c.common_applied() >= from + 5);
    c.hub("drop 0")?;
    report.check(
        "entries commit while the hub drops 20 % of frames",
        match progressed {
            Some(took) => Ok(format!(
                "every board applied {from} -> {} in {:.1} s",
                c.common_applied(),
                took.as_secs_f64()
            )),
            None => Err(format!("common applied index stuck near {from}")),
        },
    );
    let _ = c.hub("stats");

    // 7. The journals compacted, and the cluster committed past that.
    let compacted_past = |c: &Cluster| {
        let all = c.views.iter().all(|v| v.compactions > 0);
        let point = c
            .views
            .iter()
            .filter_map(|v| v.first_compaction)
            .max()
            .unwrap_or(u64::MAX);
        (all && c.common_applied() > point).then_some(point)
    };
    let took = c.wait(Duration::from_secs(60), |c| compacted_past(c).is_some());
    let compactions: Vec<u64> = c.views.iter().map(|v| v.compactions).collect();
    let installs: u64 = c.views.iter().map(|v| v.installs).sum();
    report.check(
        "journals compacted and the cluster committed past it",
        match (took, compacted_past(c)) {
            (Some(_), Some(point)) => Ok(format!(
                "compactions per board {compactions:?} (every board's first at index <= {point}), \
                 {installs} snapshots installed from a leader, every board applied through {}",
                c.common_applied()
            )),
            _ => Err(format!(
                "compactions per board {compactions:?}, first at {:?}, common applied {}",
                c.views
                    .iter()
                    .map(|v| v.first_compaction)
                    .collect::<Vec<_>>(),
                c.common_applied()
            )),
        },
    );

    // 8. A board restarts from its compacted journal: its table from the
    //    snapshot in flash, the entries after it from the log.
    if let Some((leader, _)) = c.agreed_leader() {
        let board = (1..=boards).find(|&n| n != leader).unwrap_or(1);
        c.kill(board);
        println!("==> killed board {board} (a follower with a compacted journal)");
        c.boot(board)?;
        let _ = c.wait(Duration::from_secs(10), |c| {
            c.views[board - 1].restored_snapshot.is_some()
        });
        let snapshot = c.views[board - 1].restored_snapshot.unwrap_or(0);
        // New entries too: it keeps committing after the restart.
        let goal = c.views[leader - 1].commit.max(snapshot) + 2;
        let caught = c
            .wait(Duration::from_secs(30), |c| {
                c.views[board - 1].applied >= goal && c.divergence().is_none()
            })
            .is_some();
        report.check(
            "a board restarts from its snapshot in flash and catches up",
            if snapshot > 0 && caught {
                Ok(format!(
                    "board {board} booted from its snapshot at index {snapshot}, then applied through {} (goal {goal})",
                    c.views[board - 1].applied
                ))
            } else {
                Err(format!(
                    "board {board} booted from snapshot {snapshot}, applied {} of {goal}, {:?}",
                    c.views[board - 1].applied,
                    c.divergence()
                ))
            },
        );
    }

    // 9. The leader erases flash and its timers keep running.
    erase_check(c, report);

    // 10. Safety over the whole run.
    let _ = c.wait(Duration::from_secs(2), |_| false);
    let compared: usize = c.views.iter().map(|v| v.digests.len()).sum();
    report.check(
        "same state at every index any two boards applied",
        match c.divergence() {
            None => Ok(format!(
                "{compared} applied entries compared across {boards} boards"
            )),
            Some(d) => Err(d),
        },
    );
    Ok(())
}

/// Waits for the leader to erase a bank of its journal (its next erase
/// that starts from now on) and checks that its loop ran meanwhile: it sent
/// datagrams (heartbeats at least) and logged status lines between
/// `erase start` and `erase done`, its role and term did not change, and no
/// board logged a change of role, term or leader during the erase.
fn erase_check(c: &mut Cluster, report: &mut Report) {
    let name = "the leader erases flash while its heartbeats keep leaving";
    let Some((leader, term)) = c.agreed_leader() else {
        report.check(name, Err("no agreed leader to watch".into()));
        return;
    };
    let seen = c.views[leader - 1].erases.len();
    let all_seen: usize = c.views.iter().map(|v| v.erases.len()).sum();
    let done = |c: &Cluster| {
        c.views[leader - 1]
            .erases
            .get(seen..)
            .and_then(|new| new.iter().find(|e| e.ended.is_some()))
            .cloned()
    };
    let _ = c.wait(Duration::from_secs(150), |c| done(c).is_some());
    let Some(erase) = done(c) else {
        report.check(
            name,
            Err(format!(
                "board {leader} (the leader) finished no erase within 150 s"
            )),
        );
        return;
    };
    let ended = erase.ended.unwrap_or(erase.started);
    let elections: Vec<usize> = c
        .views
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            v.state_changes
                .iter()
                .any(|&t| t >= erase.started && t <= ended)
        })
        .map(|(i, _)| i + 1)
        .collect();
    let all_erases: Vec<&Erase> = c
        .views
        .iter()
        .flat_map(|v| v.erases.iter())
        .filter(|e| e.ended.is_some())
        .collect();
    let longest = all_erases.iter().map(|e| e.ms).max().unwrap_or(0);
    // One heartbeat per peer per interval; ask for half of what one peer gets.
    let expected = erase.ms / HEARTBEAT.as_millis() as u64 / 2;
    let kept_role = erase.role == "leader"
        && erase.end_role == "leader"
        && erase.term == term
        && erase.end_term == term;
    let result = if erase.ms > ELECTION_TIMEOUT.as_millis() as u64
        && erase.sent_during >= expected.max(1)
        && erase.status_lines >= 1
        && kept_role
        && elections.is_empty()
    {
        Ok(format!(
            "board {leader}, the leader of term {term}, erased a bank in {} ms (longer than the {} ms \
             election timeout) while it sent {} datagrams and logged {} status lines; no board changed \
             role, term or leader meanwhile; {} erases seen on all boards ({} before), the longest {} ms",
            erase.ms,
            ELECTION_TIMEOUT.as_millis(),
            erase.sent_during,
            erase.status_lines,
            all_erases.len(),
            all_seen,
            longest
        ))
    } else {
        Err(format!(
            "board {leader} (leader of term {term}) erased in {} ms (must exceed {} ms): sent {} datagrams \
             (need >= {}), {} status lines (need >= 1), role {} -> {} term {} -> {}, boards with a state \
             change meanwhile {elections:?}",
            erase.ms,
            ELECTION_TIMEOUT.as_millis(),
            erase.sent_during,
            expected.max(1),
            erase.status_lines,
            erase.role,
            erase.end_role,
            erase.term,
            erase.end_term
        ))
    };
    report.check(name, result);
}

/// `cargo xtask qemu-cluster [--boards N]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut boards = 3usize;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next()) {
            ("--boards", Some(n)) => {
                boards = n
                    .parse()
                    .ok()
                    .filter(|n| (3..=5).contains(n))
                    .ok_or_else(|| Error::new(format!("--boards takes 3 to 5, not `{n}`")))?;
            }
            _ => {
                return Err(Error::new(format!(
                    "unknown argument `{arg}` (try --boards 3|5)"
                )))
            }
        }
    }
    for tool in ["qemu-system-arm", "defmt-print"] {
        if !cmd::available(tool) {
            return Err(Error::new(format!(
                "`{tool}` not found: apt-get install -y qemu-system-arm; cargo install defmt-print"
            )));
        }
    }
    let target_dir = cmd::target_dir()?;
    let firmware = build_firmware(&target_dir)?;
    let hub = build_hub(&target_dir)?;
    // Unix socket paths are short (108 bytes): run under the temp folder.
    let dir = std::env::temp_dir().join(format!("coracle-qemu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::new(format!("{}: {e}", dir.display())))?;
    println!(
        "==> {boards} boards, firmware {}, run folder {}",
        firmware.display(),
        dir.display()
    );
    let mut cluster = Cluster::start(boards, dir.clone(), firmware, &hub)?;
    let mut report = Report {
        results: Vec::new(),
    };
    let outcome = scenario(&mut cluster, &mut report);
    cluster.stop();
    outcome?;
    println!();
    println!("==> qemu-cluster summary ({boards} boards)");
    let mut failed = 0;
    for (name, result) in &report.results {
        let (verdict, detail) = match result {
            Ok(d) => ("PASS", d),
            Err(d) => {
                failed += 1;
                ("FAIL", d)
            }
        };
        println!("    {verdict} {name}: {detail}");
    }
    // Every check runs unless an early one fails (the later ones need it).
    let expected = 10;
    if failed > 0 || report.results.len() < expected {
        return Err(Error::new(format!(
            "qemu-cluster: {failed} check(s) failed, {} not run; logs in {}",
            expected.saturating_sub(report.results.len()),
            dir.display()
        )));
    }
    println!("{} passed, 0 failed", report.results.len());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_apply_lines() {
        let mut v = View::default();
        let now = Instant::now();
        v.update("1.404 INFO status role=leader term=3 leader=2 commit=7 applied=6 last=8 digest=0a sent=1 dropped=0", now);
        assert_eq!(
            (v.role.as_str(), v.term, v.leader, v.commit, v.applied),
            ("leader", 3, 2, 7, 6)
        );
        v.update(
            "1.5 INFO apply index=9 term=3 digest=deadbeef commands=5 refused=false",
            now,
        );
        assert_eq!(v.applied, 9);
        assert_eq!(v.digests.get(&9).map(String::as_str), Some("deadbeef"));
        v.update(
            "0.002 INFO restored term=4 vote=1 last=8 records=9 flash_used=280 mark=0",
            now,
        );
        assert_eq!((v.restored_last, v.max_term), (Some(8), 4));
        v.update("3.1 INFO compacted through=16 first=17 last=18 bank=1 generation=1 flash_used=96 digest=0b", now);
        v.update("4.1 INFO compacted through=32 first=33 last=33 bank=0 generation=2 flash_used=96 digest=0c", now);
        assert_eq!((v.compactions, v.first_compaction), (2, Some(16)));
        assert_eq!(v.digests.get(&32).map(String::as_str), Some("0c"));
        v.update(
            "5.0 INFO installed snapshot index=48 term=5 digest=0d commands=40",
            now,
        );
        assert_eq!((v.installs, v.applied, v.max_term), (1, 48, 4));
        v.update("0.002 INFO restored term=5 vote=1 last=50 records=9 flash_used=280 mark=0 snapshot=48 digest=0d", now);
        assert_eq!((v.restored_last, v.term), (Some(50), 5));
    }

    #[test]
    fn parses_erase_lines_and_counts_status_lines_between() {
        let mut v = View::default();
        let start = Instant::now();
        v.update(
            "9.0 INFO erase start bank=1 units=8 role=leader term=3 sent=400",
            start,
        );
        v.update("9.5 INFO status role=leader term=3 leader=2 commit=7 applied=6 last=8 digest=0a sent=410 dropped=0", start);
        let end = start + Duration::from_millis(1200);
        v.update("10.2 INFO erase done bank=1 units=8 ms=1201 role=leader term=3 sent=424 sent_during=24", end);
        v.update("10.5 INFO status role=leader term=3 leader=2 commit=8 applied=8 last=8 digest=0a sent=430 dropped=0", end);
        let e = &v.erases[0];
        assert_eq!((e.ms, e.sent_during, e.status_lines), (1201, 24, 1));
        assert_eq!(
            (e.role.as_str(), e.end_role.as_str(), e.term, e.end_term),
            ("leader", "leader", 3, 3)
        );
        assert_eq!(e.ended, Some(end));
        assert!(v.state_changes.is_empty());
        v.update("11.0 INFO state role=follower term=4 leader=0", end);
        assert_eq!(v.state_changes, [end]);
    }
}
