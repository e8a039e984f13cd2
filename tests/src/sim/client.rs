//! Simulated clients: a key-value workload with timeouts and retries.
//!
//! A client runs one operation at a time. It sends the operation to the node it believes
//! leads (at first, or after a timeout, a random one). A node that does not lead answers
//! `NotLeader` with the leader it knows, and the client resends there: the operation was
//! not proposed, so resending keeps it one operation of the history. The same holds for
//! `Retry` (the leader refused the proposal) and `Lost` (a different entry was applied at
//! the proposal's index, so the proposal can never commit). When no answer comes before
//! the client's timeout, the operation is indeterminate (it may still take effect later)
//! and the client moves on to a new one.

use crate::linearizability::{Key, Op, OpId, Output, Value};
use crate::sim::kv::Command;
use crate::sim::rng::SimRng;
use crate::sim::Time;
use coracle::NodeId;
use std::collections::HashMap;

/// A request from a client to a node.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Index of the client.
    pub client: usize,
    /// Attempt number of this operation (to ignore stale answers).
    pub attempt: u32,
    /// The command.
    pub command: Command,
}

/// What a node answers.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// The operation was applied with this output.
    Done {
        /// The operation's sequence number.
        seq: u64,
        /// The attempt.
        attempt: u32,
        /// Its output.
        output: Output,
    },
    /// The node does not lead; `hint` is the leader it knows of.
    NotLeader {
        /// The operation's sequence number.
        seq: u64,
        /// The attempt.
        attempt: u32,
        /// The leader the node knows.
        hint: Option<NodeId>,
    },
    /// The proposal was refused (back-pressure) or can never commit: send it again.
    Retry {
        /// The operation's sequence number.
        seq: u64,
        /// The attempt.
        attempt: u32,
    },
}

impl Reply {
    /// The sequence number and attempt the reply answers.
    pub fn target(&self) -> (u64, u32) {
        match *self {
            Reply::Done { seq, attempt, .. }
            | Reply::NotLeader { seq, attempt, .. }
            | Reply::Retry { seq, attempt } => (seq, attempt),
        }
    }
}

/// The operation a client is waiting for.
#[derive(Clone, Copy, Debug)]
pub struct InFlight {
    /// Its id in the history.
    pub op_id: OpId,
    /// The command sent.
    pub command: Command,
    /// The current attempt.
    pub attempt: u32,
}

/// One simulated client.
#[derive(Clone, Debug)]
pub struct Client {
    /// The client id (as recorded in the history and in commands; never 0).
    pub id: u64,
    /// The operation in flight, if any.
    pub in_flight: Option<InFlight>,
    /// The node the client sends to next (index), if it knows one.
    pub leader_hint: Option<usize>,
    /// Invocation time of the latest operation that completed with an answer.
    pub last_ok_invoked: Option<Time>,
    /// Operations answered.
    pub ok: u64,
    /// Operations that timed out.
    pub timed_out: u64,
    seq: u64,
    values: u64,
    known: HashMap<Key, Option<Value>>,
}

impl Client {
    /// A client with id `id` (at least 1).
    pub fn new(id: u64) -> Self {
        Client {
            id,
            in_flight: None,
            leader_hint: None,
            last_ok_invoked: None,
            ok: 0,
            timed_out: 0,
            seq: 0,
            values: 0,
            known: HashMap::new(),
        }
    }

    fn fresh_value(&mut self) -> Value {
        self.values += 1;
        self.id << 32 | self.values
    }

    /// The next operation of the workload over keys `0..keys`: puts, gets, deletes and
    /// compare-and-sets (expecting what this client last saw, or absence).
    pub fn next_command(&mut self, rng: &mut SimRng, keys: u64) -> Command {
        let key = rng.below(keys.max(1));
        let op = match rng.below(100) {
            0..=29 => Op::Put {
                key,
                value: self.fresh_value(),
            },
            30..=59 => Op::Get { key },
            60..=69 => Op::Delete { key },
            _ => {
                let expected = match self.known.get(&key) {
                    Some(&v) if rng.chance(0.8) => v,
                    _ if rng.chance(0.5) => None,
                    _ => Some(self.id << 32 | rng.range(1, self.values.max(1))),
                };
                let new = if rng.chance(0.1) {
                    None
                } else {
                    Some(self.fresh_value())
                };
                Op::CompareAndSet { key, expected, new }
            }
        };
        self.seq += 1;
        Command {
            client: self.id,
            seq: self.seq,
            op,
        }
    }

    /// Learns from an answer what the key holds now.
    pub fn learn(&mut self, op: &Op, output: &Output) {
        let key = op.key();
        match (*op, *output) {
            (Op::Put { value, .. }, _) => {
                self.known.insert(key, Some(value));
            }
            (Op::Delete { .. }, _) => {
                self.known.insert(key, None);
            }
            (_, Output::Read(v)) => {
                self.known.insert(key, v);
            }
            (Op::CompareAndSet { new, .. }, Output::Cas(true)) => {
                self.known.insert(key, new);
            }
            _ => {}
        }
    }
}
