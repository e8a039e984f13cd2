//! The commands of a transcript, run on a [`Cluster`] whose trace is on. Every command prints
//! what the nodes did in the canonical text form of `host::text`: each message sent
//! (`1->2 AppendEntries ...`), each delivery (`> 1->2 ...`, the receiver's outputs
//! indented under it), each Persist batch, apply, restore, read, state change, and what the
//! command itself reports.
//!
//! Commands (ids are node ids; a list is `1,2,3`; `all` is every node up):
//!
//! - `add-nodes N [voters=(1,2,3)] [term=T] [election=E] [heartbeat=H] [retransmit=R]
//!   [chunk=B] [inflight=I] [per-message=M] [keep=K] [pre-vote=false]
//!   [check-quorum=false] [memory=BYTES]`: starts N new nodes (ids after the highest so
//!   far) that know the cluster as `voters` (by default the new nodes). Input lines
//!   `id: t1 t2 ...` give a node a log of empty commands of those terms, with current term
//!   `term`. A node's memory log keeps every entry, or with `memory` about that many bytes
//!   of entries: older ones are read back from its disk when needed (`fetch`).
//! - `campaign N`, `propose N DATA...` (one proposal per word, in one input: the node is
//!   drained after the last), `transfer N M`, `read N ID [lease]`,
//!   `change N add-learner|add-voter|promote|demote|remove M`,
//!   `change N joint voters=(..) [learners=(..)]`, `change N leave-joint`.
//! - `tick IDS [T]`: T ticks (default 1) pass on each node.
//! - `run T [quiet]`: T rounds of one tick on every node then `stabilize`. Quiet prints
//!   only state changes, applies, restores and reads, and how many messages went by.
//! - `deliver [FROM->TO] [kind=K] [where=TEXT] [count=C]`: delivers the messages queued now
//!   (those that match: `*` for any node, K a kind as printed, TEXT a part of the message as
//!   printed; the first C of them), not the ones they cause. `drop` takes the same filter.
//! - `stabilize`: delivers messages, and makes the batches of nodes that do not hold them
//!   durable, until nothing is left.
//! - `hold IDS`: the hosts of these nodes keep their Persist batches (written, not durable)
//!   until `persist IDS`; `release IDS` makes them durable and stops holding.
//! - `partition 1 | 2,3`, `isolate N`, `cut A->B`, `cut A-B`, `heal`.
//! - `crash IDS`: the nodes stop; their disks keep what was acknowledged; messages queued
//!   to them are lost. `restart IDS [lost-state-machine] [skip-vote-guard]`.
//! - `lose-tail N I`: node N's disk loses every entry after I (a torn write).
//! - `snapshot N [index=I]`: the host of N writes its state machine at its applied index
//!   (or I) to its snapshot store and tells the node.
//! - `inject A->B MESSAGE`: delivers a message written as the transcript prints one.
//! - `status [IDS]`, `log [IDS]`, `disk [IDS]`, `counters [IDS]`, `queue`: print state.
//! - `reset`: a new, empty cluster (the next scene of the file).
//!
//! A node whose host does not hold its batches makes each durable as soon as it is
//! drained (silently); a held batch prints `(held)`, and `N persisted #k` when it is made
//! durable. A state machine is the concatenation of the commands applied; a snapshot holds
//! its bytes.

use crate::host::text;
use crate::host::{Cluster, Envelope, EventKind};
use coracle::{
    CachedLog, Config, LogStorage, MembershipChange, Node, NodeId, ProgressState, ReadMode, Role,
    Term,
};
use std::collections::BTreeSet;
use std::fmt::Write;

pub struct Env {
    /// Every memory log is a [`CachedLog`]: unbounded unless `add-nodes memory=BYTES`.
    c: Cluster<CachedLog>,
}

type Args = Vec<String>;

/// The value of `key=value` in `args`.
fn opt<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

/// `1,2,3` or `(1,2,3)` or `()`.
fn id_list(s: &str) -> Result<Vec<NodeId>, String> {
    let s = s.trim_start_matches('(').trim_end_matches(')');
    s.split(',').filter(|x| !x.is_empty()).map(number).collect()
}

/// `A->B` with `*` for any node.
fn link(s: &str) -> Result<(Option<NodeId>, Option<NodeId>), String> {
    let (a, b) = s
        .split_once("->")
        .ok_or_else(|| format!("expected FROM->TO, not {s}"))?;
    let side = |x: &str| {
        if x == "*" {
            Ok(None)
        } else {
            number(x).map(Some)
        }
    };
    Ok((side(a)?, side(b)?))
}

impl Env {
    pub fn new() -> Self {
        let mut c = Cluster::empty();
        c.trace = Some(Vec::new());
        Env { c }
    }

    /// Runs one case: its first line is a command; `add-nodes` takes the other lines as
    /// its input, any other command runs them as more commands.
    pub fn exec(&mut self, input: &[String]) -> Result<String, String> {
        let mut out = String::new();
        let first = text::tokens(&input[0])?;
        if first[0] == "add-nodes" {
            self.add_nodes(&first[1..], &input[1..])?;
            return Ok(out);
        }
        for line in input.iter().filter(|l| !l.starts_with('#')) {
            self.command(line, &mut out)?;
        }
        Ok(out)
    }

    fn command(&mut self, line: &str, out: &mut String) -> Result<(), String> {
        let tokens = text::tokens(line)?;
        let (cmd, args) = tokens.split_first().ok_or("an empty command")?;
        let args: Args = args.to_vec();
        let arg = |i: usize| -> Result<&str, String> {
            args.get(i)
                .map(String::as_str)
                .ok_or_else(|| format!("{cmd}: argument {} missing", i + 1))
        };
        let id = || -> Result<NodeId, String> { number(arg(0)?) };
        let mut quiet = false;
        match cmd.as_str() {
            "reset" => *self = Env::new(),
            "campaign" => {
                let id = id()?;
                self.up(id)?.campaign();
                self.c.drain(id);
            }
            "propose" => {
                let id = id()?;
                if args.len() < 2 {
                    return Err("propose N DATA...".into());
                }
                for word in &args[1..] {
                    let data = text::parse_bytes(word).unwrap_or_else(|_| word.as_bytes().to_vec());
                    match self.up(id)?.propose(&data) {
                        Ok(p) => writeln!(out, "{id} proposed {}", text::at(p.index, p.term)),
                        Err(e) => writeln!(out, "{id} refused: {e:?}"),
                    }
                    .unwrap();
                }
                self.c.drain(id);
            }
            "change" => {
                let id = id()?;
                self.change(id, &args[1..], out)?;
                self.c.drain(id);
            }
            "transfer" => {
                let id = id()?;
                let target = number(arg(1)?)?;
                if let Err(e) = self.up(id)?.transfer_leadership(target) {
                    writeln!(out, "{id} refused: {e:?}").unwrap();
                }
                self.c.drain(id);
            }
            "read" => {
                let id = id()?;
                let read_id = number(arg(1)?)?;
                let mode = if flag(&args, "lease") {
                    ReadMode::Lease
                } else {
                    ReadMode::ReadIndex
                };
                if let Err(e) = self.up(id)?.read(read_id, mode) {
                    writeln!(out, "{id} refused: {e:?}").unwrap();
                }
                self.c.drain(id);
            }
            "tick" => {
                let ticks = args.get(1).map_or(Ok(1), |t| number(t))?;
                for id in self.ids(arg(0)?)? {
                    self.up(id)?;
                    self.c.tick(id, ticks);
                }
            }
            "run" => {
                let rounds = number(arg(0)?)?;
                quiet = flag(&args, "quiet");
                self.c.run(rounds);
            }
            "stabilize" => self.c.stabilize(),
            "deliver" | "drop" => {
                let (from, to) = match args.iter().find(|a| a.contains("->")) {
                    Some(l) => link(l)?,
                    None => (None, None),
                };
                let kind = opt(&args, "kind").map(str::to_string);
                let count = opt(&args, "count").map(number::<usize>).transpose()?;
                let containing = opt(&args, "where").map(str::to_string);
                let mut taken = 0;
                let matches = |e: &Envelope| {
                    from.is_none_or(|f| f == e.from)
                        && to.is_none_or(|t| t == e.to)
                        && kind
                            .as_ref()
                            .is_none_or(|k| e.message.as_message().kind() == k)
                        && containing.as_ref().is_none_or(|w| {
                            text::message(&e.message.as_message()).contains(w.as_str())
                        })
                };
                let mut chosen = Vec::new();
                let mut kept = std::collections::VecDeque::new();
                for e in self.c.queue.drain(..) {
                    if matches(&e) && count.is_none_or(|c| taken < c) {
                        taken += 1;
                        chosen.push(e);
                    } else {
                        kept.push_back(e);
                    }
                }
                self.c.queue = kept;
                for env in chosen {
                    if cmd == "drop" {
                        let m = text::message(&env.message.as_message());
                        writeln!(out, "dropped {}->{} {m}", env.from, env.to).unwrap();
                    } else {
                        self.c.deliver(env);
                    }
                }
            }
            "hold" => {
                for id in self.ids(arg(0)?)? {
                    self.c.manual_sync.insert(id);
                }
            }
            "persist" | "release" => {
                for id in self.ids(arg(0)?)? {
                    if cmd == "release" {
                        self.c.manual_sync.remove(&id);
                    }
                    self.c.sync(id);
                }
            }
            "partition" => {
                let groups: Vec<Vec<NodeId>> = line["partition".len()..]
                    .split('|')
                    .map(|g| id_list(&g.replace(' ', "")))
                    .collect::<Result<_, _>>()?;
                for (i, a) in groups.iter().enumerate() {
                    for b in groups.iter().skip(i + 1) {
                        for &x in a {
                            for &y in b {
                                self.c.cut.insert((x, y));
                                self.c.cut.insert((y, x));
                            }
                        }
                    }
                }
            }
            "isolate" => {
                for id in self.ids(arg(0)?)? {
                    self.c.isolate(id);
                }
            }
            "cut" => {
                let a = arg(0)?;
                if let Some((x, y)) = a.split_once('-').filter(|(_, y)| !y.starts_with('>')) {
                    let (x, y) = (number(x)?, number(y)?);
                    self.c.cut.insert((x, y));
                    self.c.cut.insert((y, x));
                } else {
                    match link(a)? {
                        (Some(x), Some(y)) => {
                            self.c.cut.insert((x, y));
                        }
                        _ => return Err("cut takes A->B or A-B".into()),
                    }
                }
            }
            "heal" => self.c.heal(),
            "crash" => {
                for id in self.ids(arg(0)?)? {
                    self.up(id)?;
                    let held = self.c.held_syncs.get(&id).copied();
                    let queued = self.c.queue.iter().filter(|e| e.to == id).count();
                    self.c.crash(id);
                    write!(out, "{id} crashed").unwrap();
                    if let Some(t) = held {
                        write!(out, "; batches through #{} were not durable: lost", t.0).unwrap();
                    }
                    if queued > 0 {
                        write!(out, "; {queued} message(s) queued to it lost").unwrap();
                    }
                    out.push('\n');
                }
            }
            "restart" => {
                for id in id_list(arg(0)?)? {
                    if self.c.nodes.contains_key(&id) {
                        return Err(format!("node {id} is up"));
                    }
                    if flag(&args, "lost-state-machine") {
                        self.c.forget_state_machine(id);
                    }
                    self.c.restart(id);
                    if flag(&args, "skip-vote-guard") {
                        self.c.node_mut(id).skip_vote_guard();
                    }
                    self.flush(out, false);
                    writeln!(out, "{id} restarted: {}", self.status_line(id)).unwrap();
                    self.c.drain(id);
                }
            }
            "lose-tail" => {
                let id = id()?;
                let keep = number(arg(1)?)?;
                self.c.lose_durable_tail(id, keep);
                writeln!(out, "{id} disk: {}", self.disk_line(id)).unwrap();
            }
            "snapshot" => {
                let id = id()?;
                let index = match opt(&args, "index") {
                    Some(i) => number(i)?,
                    None => self.up(id)?.applied_index(),
                };
                match self.c.take_snapshot(id, index) {
                    Ok(meta) => writeln!(out, "{id} snapshot {}", text::snapshot_meta(&meta)),
                    Err(e) => writeln!(out, "{id} refused: {e:?}"),
                }
                .unwrap();
            }
            "inject" => {
                let (from, to) = match link(arg(0)?)? {
                    (Some(f), Some(t)) => (f, t),
                    _ => return Err("inject takes A->B".into()),
                };
                let rest = line.splitn(3, ' ').nth(2).ok_or("inject: a message")?;
                let message = text::parse_message(rest)?;
                self.c.deliver(Envelope { from, to, message });
            }
            "status" => {
                for id in self.ids(args.first().map_or("all", |s| s))? {
                    writeln!(out, "{id}: {}", self.status_line(id)).unwrap();
                    self.progress_lines(id, out);
                }
            }
            "log" => {
                for id in self.ids(args.first().map_or("all", |s| s))? {
                    writeln!(out, "{id}: {}", self.log_line(id)?).unwrap();
                }
            }
            "disk" => {
                for id in self.ids(args.first().map_or("all", |s| s))? {
                    writeln!(out, "{id}: {}", self.disk_line(id)).unwrap();
                }
            }
            "counters" => {
                for id in self.ids(args.first().map_or("all", |s| s))? {
                    writeln!(out, "{id}: {}", self.counters_line(id)?).unwrap();
                }
            }
            "queue" => {
                for e in &self.c.queue {
                    let m = text::message(&e.message.as_message());
                    writeln!(out, "{}->{} {m}", e.from, e.to).unwrap();
                }
            }
            other => return Err(format!("unknown command {other}")),
        }
        self.flush(out, quiet);
        Ok(())
    }

    /// Appends the recorded events to `out` and clears them.
    fn flush(&mut self, out: &mut String, quiet: bool) {
        let events = std::mem::take(self.c.trace.as_mut().unwrap());
        let mut messages = 0;
        for e in events {
            if quiet {
                match e.kind {
                    EventKind::Deliver => messages += 1,
                    EventKind::State
                    | EventKind::Apply
                    | EventKind::Restore
                    | EventKind::Read
                    | EventKind::Host => writeln!(out, "{}", e.text).unwrap(),
                    _ => {}
                }
            } else {
                writeln!(out, "{}{}", "  ".repeat(e.depth), e.text).unwrap();
            }
        }
        if quiet {
            writeln!(out, "({messages} messages delivered or dropped)").unwrap();
        }
    }

    fn node(&self, id: NodeId) -> Result<&Node<CachedLog>, String> {
        self.c
            .nodes
            .get(&id)
            .ok_or_else(|| format!("node {id} is down"))
    }

    fn up(&mut self, id: NodeId) -> Result<&mut Node<CachedLog>, String> {
        self.c
            .nodes
            .get_mut(&id)
            .ok_or_else(|| format!("node {id} is down"))
    }

    /// `all` (every node up) or a list.
    fn ids(&self, s: &str) -> Result<Vec<NodeId>, String> {
        if s == "all" {
            return Ok(self.c.nodes.keys().copied().collect());
        }
        id_list(s)
    }

    fn add_nodes(&mut self, args: &[String], input: &[String]) -> Result<(), String> {
        let count: u64 = number(args.first().ok_or("add-nodes N")?)?;
        let first = self.c.configs.keys().max().map_or(1, |m| m + 1);
        let ids: Vec<NodeId> = (first..first + count).collect();
        let voters = match opt(args, "voters") {
            Some(v) => id_list(v)?,
            None if first == 1 => ids.clone(),
            None => return Err("add-nodes: say voters=(..) for nodes that join".into()),
        };
        let term: Term = opt(args, "term").map_or(Ok(0), number)?;
        let mut logs = std::collections::BTreeMap::new();
        for line in input {
            let (id, terms) = line
                .split_once(':')
                .ok_or_else(|| format!("expected `id: terms`, not {line}"))?;
            let terms: Vec<Term> = terms
                .split_whitespace()
                .map(number)
                .collect::<Result<_, _>>()?;
            logs.insert(number::<NodeId>(id.trim())?, terms);
        }
        for &id in &ids {
            let config = configure(id, args)?;
            let terms = logs.remove(&id).unwrap_or_default();
            let disk = crate::host::store_of(&crate::host::log_of(&terms, term, |_| Vec::new()));
            let budget = opt(args, "memory").map_or(Ok(usize::MAX), number)?;
            self.c
                .add(config, disk, &voters, move || CachedLog::new(budget));
            // A state built by hand: no leader can have been heard from recently.
            self.c.node_mut(id).skip_vote_guard();
        }
        match logs.keys().next() {
            Some(id) => Err(format!("add-nodes: no new node {id}")),
            None => Ok(()),
        }
    }

    fn change(&mut self, id: NodeId, args: &[String], out: &mut String) -> Result<(), String> {
        let what = args.first().ok_or("change N WHAT")?;
        let target = || -> Result<NodeId, String> {
            number(
                args.get(1)
                    .ok_or_else(|| format!("change {what}: a node id"))?,
            )
        };
        let voters = id_list(opt(args, "voters").unwrap_or(""))?;
        let learners = id_list(opt(args, "learners").unwrap_or(""))?;
        let change = match what.as_str() {
            "add-learner" => MembershipChange::AddLearner(target()?),
            "add-voter" => MembershipChange::AddVoter(target()?),
            "promote" => MembershipChange::Promote(target()?),
            "demote" => MembershipChange::Demote(target()?),
            "remove" => MembershipChange::Remove(target()?),
            "leave-joint" => MembershipChange::LeaveJoint,
            "joint" => MembershipChange::Joint {
                voters: &voters,
                learners: &learners,
            },
            other => return Err(format!("unknown change {other}")),
        };
        match self.up(id)?.change_membership(change) {
            Ok(p) => writeln!(out, "{id} proposed {}", text::at(p.index, p.term)),
            Err(e) => writeln!(out, "{id} refused {}: {e:?}", args.join(" ")),
        }
        .unwrap();
        Ok(())
    }

    fn status_line(&self, id: NodeId) -> String {
        let Some(n) = self.c.nodes.get(&id) else {
            return "down".into();
        };
        let vote = n.voted_for().map_or("none".into(), |v| v.to_string());
        let leader = n.leader().map_or("none".into(), |v| v.to_string());
        let mut s = format!(
            "{:?} term={} vote={vote} leader={leader} commit={} applied={} durable={} last={} config{}",
            n.role(),
            n.term(),
            n.commit_index(),
            n.applied_index(),
            n.durable_index(),
            n.last_index(),
            text::members(n.members()),
        );
        if let Some(t) = n.transferring_to() {
            write!(s, " transferring-to={t}").unwrap();
        }
        if n.storage_failed() {
            s.push_str(" storage-failed");
        }
        s
    }

    /// A leader's view of each peer.
    fn progress_lines(&self, id: NodeId, out: &mut String) {
        let Some(n) = self.c.nodes.get(&id) else {
            return;
        };
        if n.role() != Role::Leader {
            return;
        }
        let peers: BTreeSet<NodeId> = n.members().map(|m| m.id).filter(|&p| p != id).collect();
        for p in peers {
            let Some(pr) = n.progress(p) else { continue };
            let state = match pr.state {
                ProgressState::Probe => "probe",
                ProgressState::Replicate => "replicate",
                ProgressState::Snapshot => "snapshot",
            };
            writeln!(
                out,
                "  peer {p}: {state} match={} next={} inflight={}",
                pr.match_index, pr.next_index, pr.inflight
            )
            .unwrap();
        }
    }

    fn log_line(&self, id: NodeId) -> Result<String, String> {
        let n = self.node(id)?;
        let log = n.log();
        let mut s = String::new();
        let first = log.first_index();
        if first > 1 {
            let term = log.term(first - 1).unwrap_or(0);
            write!(s, "compacted-through={} ", text::at(first - 1, term)).unwrap();
        }
        if let Some(meta) = log.snapshot_meta() {
            write!(s, "snapshot=({}) ", text::snapshot_meta(&meta)).unwrap();
        }
        let on_disk = (first..=log.last_index())
            .filter(|&i| log.entry(i).is_none())
            .count();
        let entries = (first..=log.last_index()).filter_map(|i| log.entry(i));
        write!(s, "entries={}", text::entries(entries)).unwrap();
        if on_disk > 0 {
            write!(s, " (and {on_disk} on disk only)").unwrap();
        }
        Ok(s)
    }

    /// What node `id`'s disk holds (what a restart finds).
    fn disk_line(&self, id: NodeId) -> String {
        let d = &self.c.durable[&id];
        let mut s = format!("hard-state={}", text::hard_state(&d.hard_state));
        if d.compacted.0 > 0 {
            write!(
                s,
                " compacted-through={}",
                text::at(d.compacted.0, d.compacted.1)
            )
            .unwrap();
        }
        if let Some((meta, data)) = &d.snapshot {
            write!(
                s,
                " snapshot=({} data={})",
                text::snapshot_meta(meta),
                text::bytes(data)
            )
            .unwrap();
        }
        if let Some((meta, data)) = &d.incoming {
            write!(
                s,
                " incoming=({} data={})",
                text::at(meta.index, meta.term),
                text::bytes(data)
            )
            .unwrap();
        }
        let entries = d.entries.iter().map(|e| e.as_entry());
        write!(s, " entries={}", text::entries(entries)).unwrap();
        s
    }

    fn counters_line(&self, id: NodeId) -> Result<String, String> {
        let n = self.node(id)?;
        // Every counter, from its Debug form, so a new one shows up by itself.
        let all = format!("{:?}", n.counters());
        let fields = all
            .split_once('{')
            .and_then(|(_, f)| f.strip_suffix('}'))
            .unwrap_or("");
        let nonzero: Vec<String> = fields
            .split(',')
            .filter_map(|f| f.trim().split_once(": "))
            .filter(|(_, v)| *v != "0")
            .map(|(k, v)| format!("{}={v}", k.replace('_', "-")))
            .collect();
        Ok(if nonzero.is_empty() {
            "all zero".into()
        } else {
            nonzero.join(" ")
        })
    }
}

/// Node `id`'s configuration: the defaults of the paper tests with the options of
/// `add-nodes`.
fn configure(id: NodeId, args: &[String]) -> Result<Config, String> {
    let mut c = crate::host::default_config(id);
    for a in args.iter().skip(1) {
        let Some((key, value)) = a.split_once('=') else {
            return Err(format!("add-nodes: unknown option {a}"));
        };
        match key {
            "voters" | "term" | "memory" => {}
            "election" => c.election_ticks = number(value)?,
            "heartbeat" => c.heartbeat_ticks = number(value)?,
            "retransmit" => c.retransmit_ticks = number(value)?,
            "chunk" => c.max_snapshot_chunk_bytes = number(value)?,
            "inflight" => c.max_inflight = number(value)?,
            "per-message" => c.max_entries_per_message = number(value)?,
            "keep" => c.keep_entries_behind_snapshot = number(value)?,
            "pre-vote" => c.pre_vote = number::<bool>(value)?,
            "check-quorum" => c.check_quorum = number::<bool>(value)?,
            _ => return Err(format!("add-nodes: unknown option {a}")),
        }
    }
    c.validate().map_err(|e| format!("add-nodes: {e}"))?;
    Ok(c)
}
