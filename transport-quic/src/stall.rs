//! Disk stalls: the watchdog on the running flush, and a fault to cause one.
//!
//! A node cannot vote or acknowledge before its writes are durable (Figure 2), so a leader
//! whose `fdatasync` hangs holds the cluster's writes hostage while it keeps sending
//! heartbeats. [`StallWatch`] times the flush the fsync thread is running; once it has run
//! for `storage.stall_timeout_ms` the node is told
//! ([`Node::set_storage_stalled`](coracle::Node::set_storage_stalled)): it steps down, and
//! neither campaigns nor votes, until the flush returns. The others elect a leader among
//! themselves meanwhile.
//!
//! [`FlushGate`] holds the fsync thread before its next flush, as a disk that hangs would:
//! fault injection for tests and drills ([`RunningNode::hold_flushes`](crate::server::RunningNode::hold_flushes)).

use crate::server::CoreNode;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The watchdog on the flush the fsync thread runs.
#[derive(Debug)]
pub struct StallWatch {
    timeout: Duration,
    began: Option<Instant>,
}

impl StallWatch {
    /// A watchdog that reports a flush running for `timeout` as a stall.
    pub fn new(timeout: Duration) -> StallWatch {
        StallWatch {
            timeout,
            began: None,
        }
    }

    /// How long a flush may run before it counts as a stall.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A flush was handed to the fsync thread.
    pub fn began(&mut self) {
        self.began = Some(Instant::now());
    }

    /// The flush reported back: the node is told its storage answers again if it was
    /// stalled. Returns how long the flush took.
    pub fn ended(&mut self, node: &mut CoreNode) -> Option<Duration> {
        let took = self.began.take()?.elapsed();
        if node.storage_stalled() {
            info!(
                node = node.id(),
                took_ms = took.as_millis() as u64,
                "the disk answered again: the node may campaign and vote"
            );
            node.set_storage_stalled(false);
        }
        Some(took)
    }

    /// When the loop must wake to check the flush, if one runs and is not yet a stall.
    pub fn deadline(&self, node: &CoreNode) -> Option<Instant> {
        self.began
            .filter(|_| !node.storage_stalled())
            .map(|b| b + self.timeout)
    }

    /// Tells the node its storage stalled if the running flush has run too long.
    pub fn check(&self, node: &mut CoreNode) {
        let Some(began) = self.began else { return };
        if node.storage_stalled() || began.elapsed() < self.timeout {
            return;
        }
        warn!(
            node = node.id(),
            running_ms = began.elapsed().as_millis() as u64,
            role = ?node.role(),
            "the log's flush has not returned for storage.stall_timeout_ms: the disk stalls; \
             not leading, campaigning or voting until it answers"
        );
        node.set_storage_stalled(true);
    }
}

/// Holds the fsync thread before each flush while closed (a disk that hangs).
#[derive(Clone, Debug, Default)]
pub struct FlushGate(Arc<(Mutex<bool>, Condvar)>);

impl FlushGate {
    /// Waits while the gate is held (the fsync thread, before a flush).
    pub(crate) fn pass(&self) {
        let (held, cv) = &*self.0;
        let mut h = held.lock().unwrap_or_else(PoisonError::into_inner);
        while *h {
            h = cv.wait(h).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Holds every flush from now on (one running finishes) until the returned guard is
    /// dropped.
    pub fn hold(&self) -> FlushHold {
        *self.0 .0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        FlushHold(self.clone())
    }
}

/// Flushes are held while this lives ([`FlushGate::hold`]).
#[derive(Debug)]
pub struct FlushHold(FlushGate);

impl Drop for FlushHold {
    fn drop(&mut self) {
        let (held, cv) = &*self.0 .0;
        *held.lock().unwrap_or_else(PoisonError::into_inner) = false;
        cv.notify_all();
    }
}
