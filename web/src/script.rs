//! A scenario's script: steps that wait for a moment of the run, act on the cluster and
//! narrate what happened, then a final check that the run ended in the state the narration
//! claims.
//!
//! The script runs inside the simulation: it looks at the cluster after every event and at
//! the times it asks to be woken, so a scenario replays exactly from its seed like any run.

use crate::host::{Index, NodeId, Term};
use crate::sim::{Sim, Time};

/// How long a step waits for its moment before the scenario is declared off course (10 s
/// of simulated time: some forty election timeouts).
pub const PATIENCE: Time = 10_000_000;

/// Values a script remembers from one step to the next (which node led, in which term...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars {
    /// A node the narration calls by name (usually the first leader).
    pub a: NodeId,
    /// A second one.
    pub b: NodeId,
    /// A third one.
    pub c: NodeId,
    /// A term worth remembering.
    pub term: Term,
    /// Another term.
    pub term2: Term,
    /// An index worth remembering.
    pub index: Index,
    /// Another number (an index or a term).
    pub other: u64,
    /// A moment worth remembering.
    pub at: Time,
    /// A group of nodes.
    pub group: Vec<NodeId>,
    /// A text (a state machine's state).
    pub text: String,
}

/// A condition on the cluster.
pub type Check = fn(&Sim, &Vars) -> bool;
/// An action on the cluster; returns the line of narration that explains it.
pub type Act = fn(&mut Sim, &mut Vars) -> String;
/// The final check: `Err` says how the run differs from the narration.
pub type Verdict = fn(&Sim, &Vars) -> Result<(), String>;

/// When a step acts.
#[derive(Clone, Copy)]
pub enum Wait {
    /// This long after the previous step.
    For(Time),
    /// As soon as the condition holds (named for the narration if it never does).
    Until(&'static str, Check),
}

/// One step: a wait, then an action.
#[derive(Clone, Copy)]
pub struct Step {
    /// When.
    pub wait: Wait,
    /// What.
    pub act: Act,
}

/// Waits for `what` to hold, then acts.
pub fn until(what: &'static str, check: Check, act: Act) -> Step {
    Step {
        wait: Wait::Until(what, check),
        act,
    }
}

/// Waits `ms` milliseconds of simulated time, then acts.
pub fn after(ms: Time, act: Act) -> Step {
    Step {
        wait: Wait::For(ms * 1_000),
        act,
    }
}

/// A scenario being played.
pub struct Script {
    steps: Vec<Step>,
    next: usize,
    since: Time,
    vars: Vars,
    lines: Vec<(Time, String)>,
    verdict: Verdict,
    outcome: Option<Result<(), String>>,
}

impl Script {
    /// A script of `steps`, checked at the end by `verdict`.
    pub fn new(steps: Vec<Step>, verdict: Verdict) -> Script {
        Script {
            steps,
            next: 0,
            since: 0,
            vars: Vars::default(),
            lines: Vec::new(),
            verdict,
            outcome: None,
        }
    }

    /// The narration so far, with the time of each line.
    pub fn lines(&self) -> &[(Time, String)] {
        &self.lines
    }

    /// `None` while playing; then whether the run ended as narrated.
    pub fn outcome(&self) -> Option<&Result<(), String>> {
        self.outcome.as_ref()
    }

    /// What the script remembers.
    pub fn vars(&self) -> &Vars {
        &self.vars
    }

    /// When the script wants to look at the cluster even if nothing happens.
    pub fn wake_at(&self) -> Option<Time> {
        if self.outcome.is_some() {
            return None;
        }
        match self.steps.get(self.next)?.wait {
            Wait::For(d) => Some(self.since + d),
            Wait::Until(..) => Some(self.since + PATIENCE),
        }
    }

    /// Looks at the cluster: acts for every step whose moment has come.
    pub fn poll(&mut self, sim: &mut Sim) {
        while self.outcome.is_none() {
            let Some(step) = self.steps.get(self.next).copied() else {
                self.outcome = Some((self.verdict)(sim, &self.vars));
                if let Some(Err(e)) = &self.outcome {
                    self.lines
                        .push((sim.now(), format!("This run did not go as narrated: {e}")));
                }
                return;
            };
            let ready = match step.wait {
                Wait::For(d) => sim.now() >= self.since + d,
                Wait::Until(what, check) => {
                    if check(sim, &self.vars) {
                        true
                    } else {
                        if sim.now() >= self.since + PATIENCE {
                            let e = format!("waited {} s for {what}", PATIENCE / 1_000_000);
                            self.lines.push((sim.now(), format!("Off course: {e}.")));
                            self.outcome = Some(Err(e));
                        }
                        return;
                    }
                }
            };
            if !ready {
                return;
            }
            let line = (step.act)(sim, &mut self.vars);
            if !line.is_empty() {
                self.lines.push((sim.now(), line));
            }
            self.next += 1;
            self.since = sim.now();
        }
    }
}
