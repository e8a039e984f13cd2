//! The rules of the Raft paper, one test each, named after the rule they check.
#![allow(clippy::unwrap_used)]

#[path = "../host/mod.rs"]
mod host;

mod bad_input;
mod election;
mod election_restriction;
mod fetch;
mod joining;
mod priority;
mod proposals;
mod read;
mod replication;
mod snapshot;
mod sole_voter;
mod storage_stall;
mod transfer;
