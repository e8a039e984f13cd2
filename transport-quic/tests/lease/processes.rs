//! The lease example with real processes (issue 17): each process runs what a service that
//! embeds Coracle runs, one Raft node (`Host<Leases>`) on its own data directory, one
//! campaigner and the leader's ticker, on 127.0.0.1 over QUIC. The holder's process is
//! killed with SIGKILL (its node dies too; 2 nodes keep a quorum), then the process of the
//! Raft leader while it holds the lease (leadership is first handed to the holder's node,
//! so that every run meets the hard case: holder and leader die together, lease time stops
//! until a new leader ticks). Each comes back from its data directory with a campaigner of
//! a new name.
//!
//! # The child
//!
//! A node process is this test binary run again (`std::env::current_exe`) on the ignored
//! test [`lease_node_process`] alone (`--exact --ignored --nocapture`), its configuration
//! file and campaigner's name in [`CHILD_CONFIG`] and [`CHILD_NAME`]; without them that
//! test returns at once. Chosen over a binary target: an integration test cannot run an
//! example's binary (`CARGO_BIN_EXE_*` exists for `[[bin]]` targets only) and a `[[bin]]`
//! for a test would ship with the crate; this way the child runs the very code under test,
//! built by the same `cargo test`, with nothing else to build or find.
//!
//! # Line protocol
//!
//! The child writes on its standard output lines of [`PREFIX`] and a [`Report`]:
//!
//! ```text
//! role TERM ROLE      its node's role (follower, pre-candidate, candidate, leader) when
//!                     its role or term changes
//! holder TOKEN NAME   the valid grant of the lease a linearizable read found, when it
//!                     changes (fencing token, holder)
//! history JSON        every grant of the node's replicated store, after `history`
//! ```
//!
//! and reads commands on its standard input: `history`; `stop` (its campaigner stops
//! asking, as a process that dies: no release); `transfer ID` (its node, if it leads, hands
//! leadership to node ID). At the end of its input (the test ended or died) it stops.
//! Lines without the prefix (the test harness's own) go to the test's standard error.

use super::common::{wait_for, Proc, TempDir};
use super::lease::{campaign, holder, tick, Grant, Leases};
use super::{bound, check_history, CONFIG, NAME, TTL};
use coracle::{Index, Role};
use coracle_quic::config::NodeConfig;
use coracle_quic::host::{Handle, Host, ReadMode};
use smol::block_on;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment variable that names a node process's configuration file.
const CHILD_CONFIG: &str = "CORACLE_LEASE_CHILD_CONFIG";
/// The environment variable that names a node process's campaigner.
const CHILD_NAME: &str = "CORACLE_LEASE_CHILD_NAME";
/// What begins every line of the protocol.
const PREFIX: &str = "@lease ";

/// Liveness limit of every wait of the test (a start, an election, a catch-up): generous,
/// for a loaded 2-core machine; the takeover bound is asserted separately.
const LIVENESS: Duration = Duration::from_secs(30);
/// How long a campaigner's or ticker's call may wait (a proposal forwarded to a leader
/// that just died gives up and is asked again).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an observer's read may wait before it is asked again.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a node process reads who holds the lease.
const OBSERVE_EVERY: Duration = Duration::from_millis(10);
/// How long the test waits for the answers to `history` before it asks again.
const HISTORY_WAIT: Duration = Duration::from_millis(300);
/// How often the test asks the leader again to hand leadership over.
const TRANSFER_EVERY: Duration = Duration::from_secs(1);

/// How many of the last reports a failure message shows.
const TAIL: usize = 40;

/// What a node process reports.
#[derive(Clone, Debug, PartialEq)]
enum Report {
    /// Its node's role in `term`.
    Role { term: u64, role: Role },
    /// The valid grant a linearizable read found.
    Holder { token: Index, name: String },
    /// Every grant of its replicated store.
    History(Vec<Grant>),
}

/// A line that is no [`Report`].
#[derive(Clone, Debug, PartialEq)]
struct BadLine {
    line: String,
    why: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a report line that does not parse ({}): {:?}",
            self.why, self.line
        )
    }
}

const ROLES: [Role; 4] = [
    Role::Follower,
    Role::PreCandidate,
    Role::Candidate,
    Role::Leader,
];

impl Report {
    /// The line (without the prefix).
    fn line(&self) -> String {
        match self {
            Report::Role { term, role } => format!("role {term} {role}"),
            Report::Holder { token, name } => format!("holder {token} {name}"),
            Report::History(grants) => format!(
                "history {}",
                serde_json::to_string(grants).unwrap_or_default()
            ),
        }
    }

    /// Reads a line (without the prefix).
    fn parse(line: &str) -> Result<Report, BadLine> {
        let bad = |why: &str| BadLine {
            line: line.into(),
            why: why.into(),
        };
        let (kind, rest) = line.split_once(' ').ok_or_else(|| bad("no space"))?;
        let mut words = rest.split(' ');
        let (first, second) = (words.next(), words.next());
        let number = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok());
        match (kind, first, second, words.next()) {
            ("role", Some(_), Some(r), None) => Ok(Report::Role {
                term: number(first).ok_or_else(|| bad("a term that is no number"))?,
                role: *ROLES
                    .iter()
                    .find(|role| role.to_string() == r)
                    .ok_or_else(|| bad("an unknown role"))?,
            }),
            ("holder", Some(_), Some(name), None) if !name.is_empty() => Ok(Report::Holder {
                token: number(first).ok_or_else(|| bad("a token that is no number"))?,
                name: name.into(),
            }),
            ("history", ..) => serde_json::from_str(rest)
                .map(Report::History)
                .map_err(|e| bad(&e.to_string())),
            ("role" | "holder", ..) => Err(bad("not two words after the kind")),
            _ => Err(bad("an unknown kind")),
        }
    }

    /// Writes the report on standard output, one line.
    fn say(&self) {
        println!("{PREFIX}{}", self.line());
    }
}

// ----- the node process -------------------------------------------------------------------

/// A node process (see the module's docs); returns at once when the test runs it without
/// [`CHILD_CONFIG`] and [`CHILD_NAME`].
#[test]
#[ignore = "a node process of the lease process test, which starts it"]
fn lease_node_process() {
    let (Ok(config), Ok(me)) = (std::env::var(CHILD_CONFIG), std::env::var(CHILD_NAME)) else {
        return;
    };
    let config = NodeConfig::load(Path::new(&config)).unwrap();
    let host = Host::start(&config, Leases::default()).unwrap();
    let node = host.handle().with_timeout(CALL_TIMEOUT);
    tick(node.clone());
    let campaigning = campaign(std::slice::from_ref(&node), NAME, &me, TTL);
    report_roles(&node);
    report_holders(node.clone().with_timeout(READ_TIMEOUT));
    for line in std::io::stdin().lines().map_while(Result::ok) {
        match line.split(' ').collect::<Vec<_>>()[..] {
            ["history"] => {
                let grants = |l: &Leases| l.grants.clone();
                if let Ok(grants) = block_on(node.read(ReadMode::ReadIndex, grants)) {
                    Report::History(grants).say();
                }
            }
            ["stop"] => campaigning.store(false, Relaxed),
            ["transfer", id] => match id.parse() {
                Ok(id) => drop(block_on(node.transfer_leadership(id))),
                Err(e) => eprintln!("transfer to {id:?}: {e}"),
            },
            _ => eprintln!("a command that is not known: {line:?}"),
        }
    }
    campaigning.store(false, Relaxed);
    if let Err(e) = host.shutdown() {
        eprintln!("{me}: {e}");
    }
}

/// Reports the node's role and term whenever either changes, until the node stops.
fn report_roles(node: &Handle<Leases>) {
    let statuses = node.watch();
    std::thread::spawn(move || {
        let mut last = None;
        while let Ok(status) = block_on(statuses.recv()) {
            if last != Some((status.term, status.role)) {
                last = Some((status.term, status.role));
                let (term, role) = (status.term, status.role);
                Report::Role { term, role }.say();
            }
        }
    });
}

/// Reads who holds the lease (linearizably) all along and reports every change.
fn report_holders(node: Handle<Leases>) {
    std::thread::spawn(move || {
        let mut last = None;
        loop {
            if let Some(g) = holder(std::slice::from_ref(&node), NAME) {
                if last != Some(g.token) {
                    last = Some(g.token);
                    let (token, name) = (g.token, g.holder);
                    Report::Holder { token, name }.say();
                }
            }
            std::thread::sleep(OBSERVE_EVERY);
        }
    });
}

// ----- the test -----------------------------------------------------------------------------

/// A report as the test received it.
#[derive(Debug)]
struct Seen {
    at: Instant,
    /// The campaigner of the process that sent it (one per process started).
    from: String,
    report: Result<Report, BadLine>,
}

/// Every report of every node process, in the order received.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<Seen>>>);

/// A holder as an observer saw it.
#[derive(Clone, Debug)]
struct Sighting {
    at: Instant,
    token: Index,
    name: String,
}

impl Sighting {
    /// The holder `seen` reports, if it reports one.
    fn of(seen: &Seen) -> Option<Sighting> {
        match &seen.report {
            Ok(Report::Holder { token, name }) => Some(Sighting {
                at: seen.at,
                token: *token,
                name: name.clone(),
            }),
            _ => None,
        }
    }
}

impl Reports {
    /// Reads `from`'s standard output until it ends, on a thread of its own.
    fn collect(&self, from: String, out: impl std::io::Read + Send + 'static) {
        let reports = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match line.strip_prefix(PREFIX) {
                    Some(report) => reports.lock().unwrap().push(Seen {
                        at: Instant::now(),
                        from: from.clone(),
                        report: Report::parse(report),
                    }),
                    None => eprintln!("[{from}] {line}"),
                }
            }
        });
    }

    /// The first holder reported at `since` or later, other than the `dead` (waits up to
    /// [`LIVENESS`]).
    fn holder_after(&self, since: Instant, dead: &[String]) -> Sighting {
        let after = |h: &Sighting| h.at >= since && !dead.contains(&h.name);
        wait_for(LIVENESS, || {
            let reports = self.0.lock().unwrap();
            reports.iter().filter_map(Sighting::of).find(after)
        })
        .unwrap_or_else(|| {
            let tail = self.tail();
            panic!("no holder other than {dead:?} within {LIVENESS:?}; last reports:\n{tail}")
        })
    }

    /// The last reports received, one a line: what a failure message shows.
    fn tail(&self) -> String {
        let reports = self.0.lock().unwrap();
        let first = reports.first().map(|s| s.at);
        let line = |s: &Seen| {
            let at = first.map(|f| s.at - f).unwrap_or_default();
            let what = s
                .report
                .as_ref()
                .map(Report::line)
                .map_err(BadLine::to_string);
            format!("{at:>9.3?} {}: {}\n", s.from, what.unwrap_or_else(|e| e))
        };
        reports.iter().rev().take(TAIL).rev().map(line).collect()
    }

    /// What `f` finds in the newest report it finds something in.
    fn newest<T>(&self, f: impl FnMut(&Seen) -> Option<T>) -> Option<T> {
        self.0.lock().unwrap().iter().rev().find_map(f)
    }

    /// The last holder anyone reported.
    fn last_holder(&self) -> Option<Sighting> {
        self.newest(Sighting::of)
    }

    /// Waits (up to [`LIVENESS`]) until `from` reports a holder: its node serves
    /// linearizable reads (it caught up).
    fn wait_serving(&self, from: &str) {
        let serving = || {
            let reports = self.0.lock().unwrap();
            let holder = |s: &Seen| s.from == from && matches!(s.report, Ok(Report::Holder { .. }));
            reports.iter().any(holder).then_some(())
        };
        wait_for(LIVENESS, serving).unwrap_or_else(|| {
            let tail = self.tail();
            panic!("{from} read no holder within {LIVENESS:?}; last reports:\n{tail}")
        });
    }

    /// The node that leads, if one of `nodes` says so in the highest term any of them
    /// reports.
    fn leader(&self, nodes: &[NodeProcess]) -> Option<u64> {
        let reports = self.0.lock().unwrap();
        let role = |n: &NodeProcess| {
            reports.iter().rev().find_map(|s| match s.report {
                Ok(Report::Role { term, role }) if s.from == n.name => Some((term, role, n.id)),
                _ => None,
            })
        };
        let highest = |r: &(u64, Role, u64)| (r.0, r.1 == Role::Leader);
        let (_, role, id) = nodes.iter().filter_map(role).max_by_key(highest)?;
        (role == Role::Leader).then_some(id)
    }

    /// `from`'s last history received at `since` or later.
    fn history(&self, from: &str, since: Instant) -> Option<Vec<Grant>> {
        self.newest(|s| match &s.report {
            Ok(Report::History(h)) if s.from == from && s.at >= since => Some(h.clone()),
            _ => None,
        })
    }
}

/// A node process started by the test; killed with SIGKILL when dropped (on a panic too),
/// after its input is closed.
struct NodeProcess {
    id: u64,
    /// Its campaigner's name.
    name: String,
    input: ChildStdin,
    process: Proc,
}

impl NodeProcess {
    /// Starts node `id` (configuration `dir/node-ID.toml`) with a campaigner named
    /// `n{id}.{incarnation}`, its reports going to `reports`.
    fn start(dir: &Path, id: u64, incarnation: u32, reports: &Reports) -> NodeProcess {
        let name = format!("n{id}.{incarnation}");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["processes::lease_node_process", "--exact", "--ignored"])
            .arg("--nocapture")
            .env(CHILD_CONFIG, dir.join(format!("node-{id}.toml")))
            .env(CHILD_NAME, &name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (input, output) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        reports.collect(name.clone(), output);
        let process = Proc(Some(child));
        NodeProcess {
            id,
            name,
            input,
            process,
        }
    }

    /// Sends a command (a process that died does not read it).
    fn send(&mut self, command: &str) {
        let _ = writeln!(self.input, "{command}");
    }
}

/// Kills the process of `node` with SIGKILL and waits for its end; returns when it ended.
fn kill(node: &mut NodeProcess) -> Instant {
    node.process.kill();
    Instant::now()
}

#[test]
fn one_holder_at_a_time_through_kill_9_of_the_holder_then_of_the_leader_holding_it() {
    let dir = TempDir::new("lease-processes");
    coracle_quic::loopback::configs(&dir.0, 3, CONFIG).unwrap();
    let (reports, start) = (Reports::default(), Instant::now());
    let mut incarnations = [1u32; 3];
    let mut nodes: Vec<NodeProcess> = (1..=3)
        .map(|id| NodeProcess::start(&dir.0, id, 1, &reports))
        .collect();
    let mut restart = |nodes: &mut Vec<NodeProcess>, i: usize| {
        incarnations[i] += 1;
        nodes[i] = NodeProcess::start(&dir.0, i as u64 + 1, incarnations[i], &reports);
        reports.wait_serving(&nodes[i].name);
    };
    let mut dead = vec![];

    // The first holder's process is killed; another campaigner takes the lease over.
    let first = reports.holder_after(start, &dead);
    let i = nodes.iter().position(|n| n.name == first.name).unwrap();
    let first_led = reports.leader(&nodes) == Some(nodes[i].id);
    let killed = kill(&mut nodes[i]);
    dead.push(first.name.clone());
    let second = reports.holder_after(killed, &dead);
    let took = second.at - killed;
    assert!(second.token > first.token, "{first:?} then {second:?}");
    restart(&mut nodes, i);

    // The holder's node is made the leader, then its process is killed: holder and leader
    // die together.
    let mut asked: Option<Instant> = None;
    let (victim, j) = wait_for(LIVENESS, || {
        let holder = reports.last_holder()?;
        let j = nodes.iter().position(|n| n.name == holder.name)?;
        match reports.leader(&nodes)? {
            l if l == nodes[j].id => Some((holder, j)),
            l if asked.is_none_or(|a| a.elapsed() > TRANSFER_EVERY) => {
                asked = Some(Instant::now());
                let id = nodes[j].id;
                nodes[l as usize - 1].send(&format!("transfer {id}"));
                None
            }
            _ => None,
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "the holder's node does not lead; last reports:\n{}",
            reports.tail()
        )
    });
    let killed = kill(&mut nodes[j]);
    dead.push(victim.name.clone());
    let third = reports.holder_after(killed, &dead);
    let took_after_leader = third.at - killed;
    assert!(third.token > victim.token, "{victim:?} then {third:?}");
    restart(&mut nodes, j);
    println!(
        "kill -9 of the holder's process{}: a new holder seen after {took:?}; of the leader \
         holding the lease: after {took_after_leader:?} (TTL + 2 election timeouts: {:?})",
        if first_led { " (its node led)" } else { "" },
        bound()
    );
    assert!(took < 3 * bound(), "took {took:?} (bound {:?})", bound());
    assert!(
        took_after_leader < 3 * bound(),
        "took {took_after_leader:?} (bound {:?})",
        bound()
    );

    // Every campaigner stops; every node's replicated history is the same and obeys the
    // rules; every holder any observer saw is in it, and no observer saw one go back.
    nodes.iter_mut().for_each(|n| n.send("stop"));
    let grants = wait_for(LIVENESS, || {
        let since = Instant::now();
        nodes.iter_mut().for_each(|n| n.send("history"));
        std::thread::sleep(HISTORY_WAIT);
        let histories: Vec<_> = nodes
            .iter()
            .map(|n| reports.history(&n.name, since))
            .collect::<Option<_>>()?;
        histories
            .iter()
            .all(|h| *h == histories[0])
            .then(|| histories[0].clone())
    })
    .expect("the same history on every node");
    check_history(&grants);
    for s in [&first, &second, &victim, &third] {
        let granted = |g: &Grant| g.token == s.token && g.holder == s.name;
        assert!(grants.iter().any(granted), "{s:?} not in {grants:#?}");
    }
    let reports = reports.0.lock().unwrap();
    let mut seen: std::collections::BTreeMap<&str, Vec<Index>> = Default::default();
    for s in reports.iter() {
        match &s.report {
            Ok(Report::Holder { token, name }) => {
                let granted = |g: &Grant| g.token == *token && g.holder == *name;
                assert!(
                    grants.iter().any(granted),
                    "{s:?} saw no grant of {grants:#?}"
                );
                seen.entry(&s.from).or_default().push(*token);
            }
            Ok(_) => {}
            Err(e) => panic!("from {}: {e}", s.from),
        }
    }
    for (observer, tokens) in &seen {
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "{observer} saw the holder go back: {tokens:?}"
        );
    }
}

/// Every report reads back as written; garbage lines are refused with the reason, never a
/// panic.
#[test]
fn report_lines_read_back_and_garbage_is_refused() {
    let grant = Grant {
        name: NAME.into(),
        holder: "n1.1".into(),
        token: 7,
        granted_at: 0,
        expires: TTL,
    };
    for report in [
        Report::Role {
            term: 3,
            role: Role::PreCandidate,
        },
        Report::Holder {
            token: 9,
            name: "n2.1".into(),
        },
        Report::History(vec![grant]),
        Report::History(vec![]),
    ] {
        assert_eq!(Report::parse(&report.line()), Ok(report));
    }
    for garbage in [
        "",
        "role",
        "role 3",
        "role x leader",
        "role 3 emperor",
        "role 3 leader extra",
        "role -1 leader",
        "holder 9",
        "holder nine n1.1",
        "holder 9 n1.1 n2.1",
        "holder 9 ",
        "history",
        "history {",
        "history [{\"name\":1}]",
        "elected 3",
        "\u{0}\u{ff}",
    ] {
        let refused = Report::parse(garbage);
        assert!(refused.is_err(), "{garbage:?} gave {refused:?}");
        assert!(refused.unwrap_err().to_string().contains("does not parse"));
    }
}
