//! A node's own membership: joining a running cluster through any member, asking to be
//! promoted once caught up, leaving, and announcing its election priority.
//!
//! A node that joins knows members by address only. It dials one (any node certificate
//! signed by the cluster CA answers), runs the hello, and asks it over the node-to-node
//! forwarding stream ([`super::forward`]) to add it as a learner at its own address; its id
//! is the one in its certificate, never one it claims. A member that does not lead answers
//! with the leader it knows and where it listens, and the joiner asks there (a few hops at
//! most). The leader answers once the configuration entry is applied. Asking again is safe:
//! a node that is already a member at that address is answered "done", one that is a
//! member at another address is refused (remove it first).
//!
//! Once a learner, a node started with `--join` (and `[membership] auto_promote`) asks the
//! leader to make it a voter when its applied index is within
//! `membership.caught_up_entries` of the commit index the leader sent it; the leader's
//! core still checks that it holds every committed entry.

use super::forward::{self, MemberRequest};
use super::handle::MembershipError;
use crate::transport::{DialFailure, Transport};
use coracle::NodeId;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one dial of a member may take before the joiner tries the next address.
const DIAL_LIMIT: Duration = Duration::from_secs(3);
/// The least time one dial gets when the join's time is shared among the addresses.
const MIN_DIAL: Duration = Duration::from_millis(500);
/// How long the joiner waits before another round over the addresses when none answered
/// or the leader asked to retry.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why a node could not join the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// No address was given.
    NoAddress,
    /// This node has no address the others can reach (its `listen` is unspecified and it
    /// has no entry of its own in `[[peers]]`).
    NoOwnAddress(String),
    /// No member could be reached in time: what happened at each address, last round.
    Unreachable(Vec<String>),
    /// The cluster refused to add this node (nothing was changed).
    Refused(String),
    /// Members answered, but the change did not go through in time (no leader, a change in
    /// progress): the last reason.
    Timeout(String),
    /// The node is shutting down or stopped.
    Stopped(String),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::NoAddress => f.write_str("no member address to join through"),
            JoinError::NoOwnAddress(a) => write!(
                f,
                "this node listens on {a}, which the others cannot dial: give it an entry of \
                 its own in [[peers]] or a specific listen address"
            ),
            JoinError::Unreachable(why) => {
                write!(
                    f,
                    "no member of the cluster could be reached: {}",
                    why.join("; ")
                )
            }
            JoinError::Refused(m) => write!(f, "the cluster refused to add this node: {m}"),
            JoinError::Timeout(m) => write!(f, "not added in time: {m}"),
            JoinError::Stopped(m) => write!(f, "the node stopped: {m}"),
        }
    }
}

impl std::error::Error for JoinError {}

/// Asks the cluster, through the members at `members` and then whichever leader they
/// name, to add this node (at `own`) as a learner; gives up after `limit`. Returns the node
/// that answered "done" (the leader).
pub(crate) async fn join(
    transport: Arc<Transport>,
    own: String,
    members: Vec<SocketAddr>,
    limit: Duration,
) -> Result<NodeId, JoinError> {
    if members.is_empty() {
        return Err(JoinError::NoAddress);
    }
    let end = Instant::now() + limit;
    let request = MemberRequest::Join(own);
    let mut failures: Vec<String>;
    let mut last_retry: Option<String> = None;
    loop {
        failures = Vec::new();
        let mut refusals = Vec::new();
        let mut queue: Vec<SocketAddr> = members.iter().rev().copied().collect();
        let mut hops = 0;
        while let Some(addr) = queue.pop() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Each address left in this round gets its share of the time (so a silent first
            // one does not use it all), at least MIN_DIAL.
            let share = (left / (queue.len() as u32 + 1)).clamp(MIN_DIAL, DIAL_LIMIT);
            let (peer, conn) = match transport.dial_member(addr, share.min(left)).await {
                Ok(p) => p,
                Err(DialFailure::Unreachable(why)) => {
                    failures.push(why);
                    continue;
                }
                Err(DialFailure::Refused(why)) => {
                    refusals.push(why);
                    continue;
                }
            };
            match forward::ask_member(peer, &conn, &request).await {
                Ok(()) => return Ok(peer),
                Err(MembershipError::NotLeader {
                    leader,
                    address: Some(a),
                }) if hops < 4 => match a.parse::<SocketAddr>() {
                    Ok(leader_addr) => {
                        hops += 1;
                        tracing::info!(via = peer, ?leader, %leader_addr, "joining: asking the leader");
                        queue.push(leader_addr);
                    }
                    Err(_) => failures.push(format!("node {peer} named a leader at {a:?}")),
                },
                Err(MembershipError::Refused(m)) => return Err(JoinError::Refused(m)),
                Err(e) => last_retry = Some(format!("node {peer} at {addr}: {e}")),
            }
        }
        // Refused at every address that answered, and no member said "retry": waiting
        // will not change it.
        if !refusals.is_empty() && last_retry.is_none() {
            return Err(JoinError::Refused(refusals.join("; ")));
        }
        if Instant::now() + RETRY_PAUSE >= end {
            return Err(match last_retry {
                Some(m) => JoinError::Timeout(m),
                None => JoinError::Unreachable(failures),
            });
        }
        transport.runtime().sleep(RETRY_PAUSE).await;
    }
}

/// What a node asks the leader about itself by itself: promotion once caught up (after a
/// join), and its node.toml priority (at start). One request in flight at a time, the
/// next try an election timeout after a failed one.
pub(crate) struct Duties {
    /// Ask to be promoted once caught up (set by a join with `auto_promote`).
    pub promote: Option<u64>,
    /// The priority to announce, until the log shows it.
    pub announce: Option<u8>,
    /// A request is out.
    busy: Arc<Mutex<bool>>,
    /// No new request before this.
    next: Instant,
    pause: Duration,
}

impl Duties {
    /// Duties that announce `priority` (unless 0 and none is set) and retry after `pause`.
    pub(crate) fn new(priority: u8, pause: Duration) -> Duties {
        Duties {
            promote: None,
            announce: Some(priority),
            busy: Arc::new(Mutex::new(false)),
            next: Instant::now(),
            pause,
        }
    }

    /// The request due now, if any: `learner` says whether this node is a learner,
    /// `voter` a voter, `behind` how far its applied index is behind the commit index it
    /// knows, `replicated` the priority the log holds for it.
    pub(crate) fn due(
        &mut self,
        learner: bool,
        voter: bool,
        behind: u64,
        replicated: Option<u8>,
    ) -> Option<MemberRequest> {
        if let Some(p) = self.announce {
            // Announced (or nothing to announce: 0 and no other value in the log).
            if replicated.unwrap_or(0) == p {
                self.announce = None;
            }
        }
        if voter {
            self.promote = None;
        }
        let now = Instant::now();
        if now < self.next || self.is_busy() || !(learner || voter) {
            return None;
        }
        let request = match (self.promote, self.announce) {
            (Some(within), _) if learner && behind <= within => MemberRequest::Promote,
            (_, Some(p)) => MemberRequest::Priority(p),
            _ => return None,
        };
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.next = now + self.pause;
        Some(request)
    }

    /// Whether anything may still be asked (else [`due`](Self::due) has nothing to do:
    /// the node loop skips it).
    pub(crate) fn pending(&self) -> bool {
        self.promote.is_some() || self.announce.is_some()
    }

    fn is_busy(&self) -> bool {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to call when the request ends (either way).
    pub(crate) fn finished(&self) -> impl FnOnce() + Send + 'static {
        let busy = self.busy.clone();
        move || *busy.lock().unwrap_or_else(|e| e.into_inner()) = false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duties_promote_a_caught_up_learner_and_announce_a_priority_once() {
        let mut d = Duties::new(5, Duration::ZERO);
        assert_eq!(d.due(false, false, 0, None), None, "not a member yet");
        assert_eq!(
            d.due(true, false, 0, None),
            Some(MemberRequest::Priority(5))
        );
        assert_eq!(d.due(true, false, 0, None), None, "one request at a time");
        d.finished()();
        d.promote = Some(10);
        assert_eq!(
            d.due(true, false, 11, None),
            Some(MemberRequest::Priority(5))
        );
        d.finished()();
        assert_eq!(d.due(true, false, 10, None), Some(MemberRequest::Promote));
        d.finished()();
        assert_eq!(d.due(false, true, 0, Some(5)), None, "voter, announced");
        assert_eq!(d.promote, None);
        assert_eq!(d.announce, None);
        // Priority 0 with nothing in the log: nothing to announce.
        let mut zero = Duties::new(0, Duration::ZERO);
        assert_eq!(zero.due(false, true, 0, None), None);
    }
}
