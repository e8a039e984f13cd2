//! The simulated network: who can reach whom, and what happens to each message.

use crate::sim::rng::SimRng;
use crate::sim::{Faults, Time};
use std::fmt::Write as _;

/// Links between nodes (directed), loss, duplication and latency.
///
/// A link `a -> b` is up when `b` hears what `a` sends. Links are checked when a message
/// is delivered, so cutting a link also loses what is in flight on it.
#[derive(Clone, Debug)]
pub struct Network {
    n: usize,
    links: Vec<bool>,
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_rate: f64,
    delay: bool,
    reorder: bool,
    /// Latest delivery time scheduled on each link, to keep links FIFO without `reorder`.
    last_delivery: Vec<Time>,
}

/// Fixed latency when the `delay` fault class is off.
pub const FIXED_LATENCY: Time = 200;

impl Network {
    /// A fully connected, loss-free network of `n` nodes with the latency behaviour of
    /// `faults`.
    pub fn new(n: usize, faults: &Faults) -> Self {
        Network {
            n,
            links: vec![true; n * n],
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            delay: faults.delay,
            reorder: faults.reorder,
            last_delivery: vec![0; n * n],
        }
    }

    /// Can `to` hear `from`?
    pub fn can_reach(&self, from: usize, to: usize) -> bool {
        self.links[from * self.n + to]
    }

    /// Sets the directed link `from -> to`.
    pub fn set_link(&mut self, from: usize, to: usize, up: bool) {
        self.links[from * self.n + to] = up;
    }

    /// Every link up.
    pub fn heal(&mut self) {
        self.links.iter_mut().for_each(|l| *l = true);
    }

    /// True if every link is up.
    pub fn is_healed(&self) -> bool {
        self.links.iter().all(|&l| l)
    }

    /// Links up only inside each group (nodes in no group are isolated).
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        self.links.iter_mut().for_each(|l| *l = false);
        for g in groups {
            for &a in g {
                for &b in g {
                    self.set_link(a, b, true);
                }
            }
        }
    }

    /// The partial partition of the whiteboard: the first `n - n/2` nodes of `order` form a
    /// connected core (A, B, C for five nodes); each remaining node reaches exactly one
    /// core node (D only B, E only C).
    pub fn bridge(&mut self, order: &[usize]) {
        let core_len = self.n - self.n / 2;
        let (core, edge) = order.split_at(core_len.min(order.len()));
        self.partition(&[core.to_vec()]);
        for (j, &e) in edge.iter().enumerate() {
            let hub = core[(j + 1) % core.len()];
            self.set_link(e, e, true);
            self.set_link(e, hub, true);
            self.set_link(hub, e, true);
        }
    }

    /// A random latency in microseconds: mostly short, with an exponential tail and rare
    /// spikes longer than an election timeout.
    pub fn latency(&self, rng: &mut SimRng) -> Time {
        if !self.delay {
            return FIXED_LATENCY;
        }
        let p = rng.unit();
        if p < 0.90 {
            rng.range(50, 600)
        } else if p < 0.99 {
            100 + rng.exponential(2_000.0) as Time
        } else {
            rng.range(5_000, 30_000)
        }
    }

    /// The delivery times of the copies of a message sent now from `from` to `to`: none
    /// if it is lost, two if it is duplicated.
    pub fn transmit(&mut self, rng: &mut SimRng, now: Time, from: usize, to: usize) -> Copies {
        let mut copies = Copies::default();
        if rng.chance(self.drop_rate) {
            return copies;
        }
        let count = if rng.chance(self.duplicate_rate) {
            2
        } else {
            1
        };
        for _ in 0..count {
            let mut at = now + self.latency(rng).max(1);
            if !self.reorder {
                let last = &mut self.last_delivery[from * self.n + to];
                at = at.max(*last);
                *last = at;
            }
            copies.push(at);
        }
        copies
    }

    /// The link matrix, one line per sender (`#` up, `.` down), for traces.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for from in 0..self.n {
            let _ = write!(s, "{}->", from + 1);
            for to in 0..self.n {
                s.push(if self.can_reach(from, to) { '#' } else { '.' });
            }
            if from + 1 < self.n {
                s.push(' ');
            }
        }
        s
    }
}

/// Delivery times of the copies of one message (0, 1 or 2).
#[derive(Clone, Copy, Debug, Default)]
pub struct Copies {
    times: [Time; 2],
    len: usize,
}

impl Copies {
    fn push(&mut self, t: Time) {
        self.times[self.len] = t;
        self.len += 1;
    }

    /// The delivery times.
    pub fn times(&self) -> &[Time] {
        &self.times[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whiteboard_partial_partition() {
        let mut net = Network::new(5, &Faults::ALL);
        net.bridge(&[0, 1, 2, 3, 4]);
        // A, B, C connected.
        for a in 0..3 {
            for b in 0..3 {
                assert!(net.can_reach(a, b));
            }
        }
        // D reaches only B; E only C.
        assert!(net.can_reach(3, 1) && net.can_reach(1, 3));
        assert!(!net.can_reach(3, 0) && !net.can_reach(3, 2) && !net.can_reach(3, 4));
        assert!(net.can_reach(4, 2) && net.can_reach(2, 4));
        assert!(!net.can_reach(4, 0) && !net.can_reach(4, 1) && !net.can_reach(4, 3));
        net.heal();
        assert!(net.is_healed());
    }

    #[test]
    fn fifo_links_without_reorder() {
        let faults = Faults {
            reorder: false,
            ..Faults::ALL
        };
        let mut net = Network::new(2, &faults);
        let mut rng = SimRng::new(3);
        let mut last = 0;
        for now in 0..1000 {
            for &t in net.transmit(&mut rng, now, 0, 1).times() {
                assert!(t >= last);
                last = t;
            }
        }
    }
}
