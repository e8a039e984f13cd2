//! A leader whose disk hangs (a flush that does not return, injected in-process with
//! `RunningNode::hold_flushes`): after `storage.stall_timeout_ms` it steps down and stays
//! out of elections, the other two elect a leader and writes resume; once its disk
//! answers it rejoins and catches up.
//!
//! A real stalled device (device-mapper `delay` on a loop device) is not tested here: it
//! needs a kernel with dm-delay and a loop device the test may create, which these shared
//! machines do not promise; the in-process hold stops the same fsync thread at the same
//! place, before the write and its `fdatasync`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::scrape::{get, scrape, with_metrics};
use common::{wait_for, Setup};
use coracle_quic::config::NodeConfig;
use coracle_quic::server::RunningNode;
use std::time::{Duration, Instant};

/// Election timeout of the test configuration (`Setup::config_text`), and the stall
/// timeout set here: two election timeouts.
const STALL_MS: u64 = 400;

fn config(setup: &Setup, id: u64) -> NodeConfig {
    with_metrics(
        setup,
        id,
        &format!("[storage]\nstall_timeout_ms = {STALL_MS}\n"),
    )
}

#[test]
fn a_leader_whose_disk_hangs_steps_down_and_writes_resume_through_a_new_leader() {
    let setup = Setup::new("disk-stall", 3);
    let nodes: Vec<RunningNode> = (1..=3)
        .map(|id| RunningNode::start(&config(&setup, id)).unwrap())
        .collect();
    let client = setup.client("client-alice");
    smol::block_on(client.put("before", "1")).unwrap();
    let old = common::leader(&client, &setup.addrs).unwrap();
    let hold = nodes[old as usize - 1].hold_flushes();
    let stalled_at = Instant::now();
    // Writes go on: the client follows the new leader. Generous bound (a shared, busy
    // machine): the stall timeout, an election or two, and the client's retries fit
    // many times in it.
    let written = wait_for(Duration::from_secs(30), || {
        smol::block_on(client.put("during", "2")).ok()
    });
    assert!(
        written.is_some(),
        "no write succeeded while node {old}'s disk hung"
    );
    let resumed = stalled_at.elapsed();
    let new = wait_for(Duration::from_secs(10), || {
        common::leader(&client, &setup.addrs).filter(|&l| l != old)
    })
    .expect("a new leader");
    let status = smol::block_on(client.status_of(setup.addrs[old as usize - 1])).unwrap();
    assert_ne!(status.role, "Leader", "the stalled node does not lead");
    assert!(
        !nodes[old as usize - 1].is_finished(),
        "the stalled node keeps running"
    );
    // Its metrics say so (the loop runs on while the flush hangs).
    let metrics = nodes[old as usize - 1].metrics_addr().unwrap();
    let s = wait_for(Duration::from_secs(10), || {
        let s = scrape(metrics);
        (get(&s, &format!("coracle_storage_stalled{{node=\"{old}\"}}")) == 1.0).then_some(s)
    })
    .expect("coracle_storage_stalled is 1 on the stalled node");
    let step_downs = format!("coracle_storage_stall_step_downs_total{{node=\"{old}\"}}");
    assert_eq!(get(&s, &step_downs), 1.0);
    // More writes while it hangs.
    for i in 0..10 {
        smol::block_on(client.put(format!("k{i}"), "v")).unwrap();
    }
    // The disk answers: the node comes back as a follower and catches up.
    drop(hold);
    let caught_up = wait_for(Duration::from_secs(30), || {
        let s = smol::block_on(client.status_of(setup.addrs[old as usize - 1])).ok()?;
        let l = smol::block_on(client.status_of(setup.addrs[new as usize - 1])).ok()?;
        (s.leader.is_some() && s.applied >= l.commit && l.commit > 0).then_some(s)
    });
    assert!(
        caught_up.is_some(),
        "node {old} did not rejoin after its disk answered"
    );
    let healthy = wait_for(Duration::from_secs(10), || {
        let s = scrape(metrics);
        (get(&s, &format!("coracle_storage_stalled{{node=\"{old}\"}}")) == 0.0).then_some(())
    });
    assert!(healthy.is_some(), "coracle_storage_stalled back to 0");
    let v = smol::block_on(client.get("k9")).unwrap();
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
    eprintln!(
        "disk stall of node {old}: writes resumed through node {new} after {} ms \
         (stall timeout {STALL_MS} ms)",
        resumed.as_millis()
    );
    client.close();
    for node in nodes {
        node.shutdown().unwrap();
    }
}
