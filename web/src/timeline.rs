//! The run the page shows, with its history: the set-up (seed, nodes, scenario) and every
//! action of the user, each at the exact event and time it was taken. The nodes are
//! deterministic, so going back in time is a replay of the set-up and the actions up to
//! the moment asked for; going forward again replays the recorded actions on the way, like
//! a recording. A new action taken in the past drops the recorded ones after it.

use crate::host::NodeId;
use crate::scenarios;
use crate::sim::{Options, SetupError, Sim, Time, MIN_NODES};
use std::fmt;

/// How a run starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setup {
    /// `nodes` voters with the default options.
    Free {
        /// The seed.
        seed: u64,
        /// How many nodes.
        nodes: usize,
    },
    /// One of the page's scenarios.
    Scenario {
        /// Its id.
        id: &'static str,
        /// The seed.
        seed: u64,
    },
}

impl Setup {
    /// The run at time 0.
    pub fn start(&self) -> Result<Sim, SetupError> {
        match *self {
            Setup::Free { seed, nodes } => Sim::new(Options::new(seed, nodes), None),
            Setup::Scenario { id, seed } => scenarios::find(id)
                .ok_or_else(|| SetupError::UnknownScenario(id.to_string()))?
                .start(seed),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        match *self {
            Setup::Free { seed, .. } | Setup::Scenario { seed, .. } => seed,
        }
    }

    /// The scenario's id, if one is played.
    pub fn scenario(&self) -> Option<&'static str> {
        match *self {
            Setup::Free { .. } => None,
            Setup::Scenario { id, .. } => Some(id),
        }
    }
}

/// What the user can do to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Crash a running node, restart a crashed one.
    ToggleNode(NodeId),
    /// Cut the one-way link `from -> to` if up, heal it if cut.
    ToggleLink(NodeId, NodeId),
    /// Heal every link.
    HealAll,
    /// A client writes to the leader.
    Write,
}

/// An action at its moment: after `events` events, at time `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Recorded {
    events: u64,
    at: Time,
    action: Action,
}

/// The page's input that cannot start a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputError {
    /// The seed is not a whole number from 0 to 2^64 - 1.
    Seed(String),
    /// The node count is not a whole number from 3 to 7.
    Nodes(String),
    /// The run could not start.
    Setup(SetupError),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::Seed(s) => write!(
                f,
                "seed \"{s}\" refused: give a whole number from 0 to 18446744073709551615"
            ),
            InputError::Nodes(s) => write!(
                f,
                "node count \"{s}\" refused: give a whole number from {MIN_NODES} to {}",
                crate::host::MAX_NODES
            ),
            InputError::Setup(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for InputError {}

/// Reads the seed field: a decimal `u64`, or hexadecimal with `0x`.
pub fn parse_seed(text: &str) -> Result<u64, InputError> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| InputError::Seed(text.to_string()))
}

/// Reads the node count field.
pub fn parse_nodes(text: &str) -> Result<usize, InputError> {
    match text.trim().parse::<usize>() {
        Ok(n) if (MIN_NODES..=crate::host::MAX_NODES).contains(&n) => Ok(n),
        _ => Err(InputError::Nodes(text.to_string())),
    }
}

/// A run and its history.
pub struct Timeline {
    setup: Setup,
    sim: Sim,
    actions: Vec<Recorded>,
    /// Actions before this one have happened in `sim`.
    cursor: usize,
    /// The latest time reached in this history.
    furthest: Time,
}

impl Timeline {
    /// A new run.
    pub fn new(setup: Setup) -> Result<Timeline, InputError> {
        let sim = setup.start().map_err(InputError::Setup)?;
        Ok(Timeline {
            setup,
            sim,
            actions: Vec::new(),
            cursor: 0,
            furthest: 0,
        })
    }

    /// The run as it is now.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// How the run started.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// The latest time reached (the end of the timeline).
    pub fn furthest(&self) -> Time {
        self.furthest
    }

    /// Moves time on by `dt`, replaying recorded actions on the way.
    pub fn advance(&mut self, dt: Time) {
        let until = self.sim.now().saturating_add(dt);
        self.run_until(until);
    }

    fn run_until(&mut self, until: Time) {
        while let Some(r) = self.actions.get(self.cursor).copied() {
            if r.at > until {
                break;
            }
            self.sim.run_to_event(r.events, r.at);
            self.apply(r.action);
            self.cursor += 1;
        }
        self.sim.run_until(until);
        self.furthest = self.furthest.max(self.sim.now());
    }

    /// Processes one message delivery or timer; false if nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let Some(at) = self.sim.next_event_at() else {
            return false;
        };
        // A recorded action due before the event happens first.
        if self.actions.get(self.cursor).is_some_and(|r| r.at <= at) {
            let r = self.actions[self.cursor];
            self.sim.run_to_event(r.events, r.at);
            self.apply(r.action);
            self.cursor += 1;
        }
        let stepped = self.sim.step();
        self.furthest = self.furthest.max(self.sim.now());
        stepped
    }

    /// Goes to time `t` (back by a replay from the start; forward by running on).
    pub fn seek(&mut self, t: Time) {
        if t < self.sim.now() {
            match self.setup.start() {
                Ok(sim) => self.sim = sim,
                Err(_) => return,
            }
            self.cursor = 0;
        }
        self.run_until(t);
    }

    /// Does `action` now and records it; recorded actions after now are dropped.
    pub fn act(&mut self, action: Action) -> String {
        self.actions.truncate(self.cursor);
        self.actions.push(Recorded {
            events: self.sim.events(),
            at: self.sim.now(),
            action,
        });
        self.cursor = self.actions.len();
        self.furthest = self.sim.now();
        self.apply(action)
    }

    fn apply(&mut self, action: Action) -> String {
        match action {
            Action::ToggleNode(id) => self.sim.toggle_node(id),
            Action::ToggleLink(from, to) => self.sim.toggle_link(from, to),
            Action::HealAll => self.sim.heal_all(),
            Action::Write => self.sim.write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::NodeView;

    fn snapshot(t: &Timeline) -> (Time, u64, Vec<NodeView>, Vec<u64>) {
        let sim = t.sim();
        (
            sim.now(),
            sim.events(),
            sim.nodes(),
            sim.flights().iter().map(|f| f.id).collect(),
        )
    }

    #[test]
    fn going_back_and_forth_replays_the_same_run_with_the_users_actions() {
        let mut t = Timeline::new(Setup::Free { seed: 4, nodes: 5 }).unwrap();
        t.advance(700_000);
        t.act(Action::Write);
        // Some steps one event at a time, then an action between two events.
        for _ in 0..7 {
            t.step();
        }
        let leader = t.sim().leader().unwrap();
        t.act(Action::ToggleNode(leader));
        t.advance(333_333);
        t.act(Action::ToggleLink(1, 2));
        t.advance(1_500_000);
        let end = snapshot(&t);
        let middle_time = 900_000;
        t.seek(middle_time);
        assert_eq!(t.sim().now(), middle_time);
        let middle = snapshot(&t);
        t.seek(end.0);
        assert_eq!(snapshot(&t), end, "forward again: the same end");
        t.seek(middle_time);
        assert_eq!(snapshot(&t), middle, "back again: the same middle");
        // A fresh run with the same set-up and no actions differs.
        let mut plain = Timeline::new(Setup::Free { seed: 4, nodes: 5 }).unwrap();
        plain.advance(end.0);
        assert_ne!(snapshot(&plain), end);
    }

    #[test]
    fn an_action_in_the_past_drops_the_recorded_future() {
        let mut t = Timeline::new(Setup::Free { seed: 9, nodes: 3 }).unwrap();
        t.advance(1_000_000);
        t.act(Action::ToggleNode(1));
        t.advance(1_000_000);
        t.seek(500_000);
        t.act(Action::ToggleNode(2));
        assert_eq!(t.furthest(), 500_000);
        t.advance(1_500_000);
        let nodes = t.sim().nodes();
        assert!(nodes[0].up, "the crash of S1 was dropped");
        assert!(!nodes[1].up);
    }

    #[test]
    fn scenarios_replay_too() {
        let mut t = Timeline::new(Setup::Scenario {
            id: "leader-crash",
            seed: 2,
        })
        .unwrap();
        t.advance(3_000_000);
        let end = snapshot(&t);
        t.seek(1_000_000);
        t.seek(3_000_000);
        assert_eq!(snapshot(&t), end);
    }

    #[test]
    fn nonsense_input_is_refused_with_a_reason() {
        assert_eq!(parse_seed(" 42 "), Ok(42));
        assert_eq!(parse_seed("0xff"), Ok(255));
        assert_eq!(parse_seed("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "banana",
            "-1",
            "1.5",
            "18446744073709551616",
            "0x",
            "4 2",
        ] {
            let err = parse_seed(bad).unwrap_err();
            assert!(err.to_string().contains("seed"), "{err}");
        }
        assert_eq!(parse_nodes("7"), Ok(7));
        for bad in [
            "",
            "2",
            "8",
            "-3",
            "three",
            "1e9",
            "99999999999999999999999",
        ] {
            let err = parse_nodes(bad).unwrap_err();
            assert!(err.to_string().contains("3 to 7"), "{err}");
        }
        assert!(matches!(
            Timeline::new(Setup::Free { seed: 1, nodes: 9 }),
            Err(InputError::Setup(SetupError::NodeCount(9)))
        ));
    }
}
