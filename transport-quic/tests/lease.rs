//! The lease example (`examples/lease.rs`) on 3 nodes over QUIC on 127.0.0.1, in this
//! process: 3 campaigners; the holder dies (its renewals stop), then the next holder dies
//! together with the Raft leader (cut off from its peers: no hand-over, a real election).
//! Checked on the replicated history of every node: grants never overlap in lease time,
//! fencing tokens strictly increase, every node holds the same history; and a new holder
//! takes over within TTL + 2 election timeouts (with a 3x margin for a shared machine).
//! The same with a node and a campaigner per process, killed with SIGKILL: [`processes`].
#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;
#[path = "../examples/lease.rs"]
#[allow(dead_code)]
mod lease;
#[path = "lease/processes.rs"]
mod processes;

use common::{wait_for, TempDir};
use coracle::Role;
use lease::{campaign, cluster, holder, tick, Grant, Leases, TICK};
use smol::block_on;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coracle_quic::host::{Handle, Host, ReadMode};

/// Lease time to live, in ticks of 50 ms: 500 ms.
const TTL: u64 = 10;
const ELECTION_MS: u64 = 200;
const CONFIG: &str = "[raft]\nelection_timeout_ms = 200\nheartbeat_ms = 30\n[transport]\n\
                      keep_alive_ms = 200\nidle_timeout_ms = 1000\nreconnect_max_ms = 300\n";
const NAME: &str = "db-primary";

/// TTL + 2 election timeouts: the takeover bound of the issue.
fn bound() -> Duration {
    TICK * TTL as u32 + Duration::from_millis(2 * ELECTION_MS)
}

/// Waits (up to 30 s, a liveness limit) for a holder of the lease other than `not`.
fn next_holder(handles: &[Handle<Leases>], not: &str) -> Grant {
    wait_for(Duration::from_secs(30), || {
        holder(handles, NAME).filter(|g| g.holder != not)
    })
    .unwrap_or_else(|| panic!("no holder other than {not:?} within 30 s"))
}

/// The history every rule is checked on: one grant after the other, never overlapping in
/// lease time (ticks the leader committed), with strictly increasing fencing tokens.
fn check_history(grants: &[Grant]) {
    for g in grants {
        assert!(
            g.granted_at <= g.expires,
            "a grant that ends before it begins: {g:?}"
        );
    }
    for w in grants.windows(2) {
        assert!(
            w[1].token > w[0].token,
            "fencing tokens must strictly increase: {w:#?}"
        );
        assert!(
            w[1].granted_at >= w[0].expires,
            "two valid holders at once (grants overlap in lease time): {w:#?}"
        );
    }
}

#[test]
fn one_holder_at_a_time_with_increasing_tokens_through_holder_and_leader_deaths() {
    let dir = TempDir::new("lease");
    let nodes: Vec<Host<Leases>> = cluster(&dir.0, CONFIG).unwrap();
    // Short timeouts for the campaigners: a proposal stuck on a cut-off leader gives up.
    let handles: Vec<Handle<Leases>> = nodes
        .iter()
        .map(|n| n.handle().with_timeout(Duration::from_secs(1)))
        .collect();
    handles.iter().cloned().for_each(tick);
    let names = ["c1", "c2", "c3"];
    let alive: Vec<Arc<AtomicBool>> = names
        .iter()
        .map(|me| campaign(&handles, NAME, me, TTL))
        .collect();
    let kill = |holder: &str| {
        let i = names.iter().position(|n| *n == holder).unwrap();
        alive[i].store(false, Relaxed);
    };

    // An observer reads the holder all along: what it sees never goes back.
    let (observing, seen) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(Mutex::new(vec![])),
    );
    let observer = {
        let (observing, seen, handles) = (observing.clone(), seen.clone(), handles.clone());
        std::thread::spawn(move || {
            while observing.load(Relaxed) {
                if let Some(g) = holder(&handles, NAME) {
                    seen.lock().unwrap().push(g.token);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let first = next_holder(&handles, "");

    // The holder dies: the lease expires and another campaigner takes it.
    kill(&first.holder);
    let killed = Instant::now();
    let second = next_holder(&handles, &first.holder);
    let took = killed.elapsed();
    assert!(second.token > first.token, "{first:?} then {second:?}");
    assert!(took < 3 * bound(), "took {took:?} (bound {:?})", bound());

    // The new holder and the Raft leader die together: the leader is cut off from its
    // peers (to them it is dead; what it appends alone, its ticks too, never commits).
    let leader = wait_for(Duration::from_secs(20), || {
        handles
            .iter()
            .find(|h| block_on(h.status()).is_some_and(|s| s.role == Role::Leader))
    })
    .expect("a leader");
    let others: Vec<u64> = handles
        .iter()
        .map(Handle::id)
        .filter(|&id| id != leader.id())
        .collect();
    kill(&second.holder);
    block_on(leader.isolate(others));
    let killed = Instant::now();
    let third = next_holder(&handles, &second.holder);
    let took_after_leader = killed.elapsed();
    assert!(third.token > second.token, "{second:?} then {third:?}");
    assert!(
        took_after_leader < 3 * bound(),
        "took {took_after_leader:?} (bound {:?})",
        bound()
    );
    println!(
        "new holder {took:?} after the holder died, {took_after_leader:?} after the holder and \
         the leader died (TTL + 2 election timeouts: {:?})",
        bound()
    );

    // Every campaigner stops; the cut-off node comes back and catches up; every node
    // holds the same history, which obeys the rules.
    alive.iter().for_each(|a| a.store(false, Relaxed));
    block_on(leader.isolate(vec![]));
    std::thread::sleep(TICK * TTL as u32); // a campaign in flight lands
    let histories: Vec<Vec<Grant>> = handles
        .iter()
        .map(|h| {
            wait_for(Duration::from_secs(20), || {
                block_on(h.read(ReadMode::ReadIndex, |l: &Leases| l.grants.clone())).ok()
            })
            .expect("a linearizable read on every node")
        })
        .collect();
    assert!(
        histories.iter().all(|h| *h == histories[0]),
        "{histories:#?}"
    );
    let grants = &histories[0];
    check_history(grants);
    for g in [&first, &second, &third] {
        assert!(grants
            .iter()
            .any(|h| h.token == g.token && h.holder == g.holder));
    }

    observing.store(false, Relaxed);
    observer.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    for node in nodes {
        node.shutdown().unwrap();
    }
}

/// The checker itself: a history with two valid holders at once, or a token that does not
/// grow, is refused.
#[test]
fn the_history_checker_refuses_overlaps_and_tokens_that_do_not_grow() {
    let grant = |holder: &str, token, granted_at, expires| Grant {
        name: NAME.into(),
        holder: holder.into(),
        token,
        granted_at,
        expires,
    };
    check_history(&[grant("a", 3, 0, 10), grant("b", 9, 10, 20)]);
    for bad in [
        [grant("a", 3, 0, 10), grant("b", 9, 9, 20)], // b granted while a still held it
        [grant("a", 3, 0, 10), grant("b", 3, 10, 20)], // the same token twice
    ] {
        let refused = std::panic::catch_unwind(|| check_history(&bad));
        assert!(refused.is_err(), "accepted {bad:?}");
    }
}

/// Garbage commands change nothing on any replica (and stop no node); a snapshot restores
/// the same state; a damaged snapshot is refused with an error.
#[test]
fn garbage_commands_and_snapshots_are_refused_without_a_change() {
    use coracle_quic::host::{RestoreError, StateMachine};
    use lease::Command;
    let mut leases = Leases::default();
    let bytes = |c: &Command| postcard::to_allocvec(c).unwrap();
    let campaign = Command::Campaign(NAME.into(), "c1".into(), TTL);
    let granted = leases.apply(7, &bytes(&campaign)).unwrap().unwrap();
    assert_eq!((granted.token, granted.expires), (7, TTL));
    for garbage in [
        &b""[..],
        b"\xff\xff\xff",
        &[1, 200, 200, 200, 200, 200],
        &[9],
    ] {
        assert_eq!(leases.apply(8, garbage).unwrap(), None, "{garbage:?}");
    }
    // A renewal with the wrong token, another holder's release: nothing changes.
    let renew = Command::Renew(NAME.into(), "c1".into(), 6, 100);
    let release = Command::Release(NAME.into(), "c2".into(), 7);
    for c in [renew, release] {
        assert_eq!(leases.apply(9, &bytes(&c)).unwrap(), Some(granted.clone()));
    }
    assert_eq!(leases.grants, vec![granted.clone()]);

    let mut snapshot = leases.snapshot(9).unwrap();
    let mut restored = Leases::default();
    restored.restore(9, &mut snapshot.as_slice()).unwrap();
    assert_eq!(
        (restored.now, &restored.grants),
        (leases.now, &leases.grants)
    );
    assert_eq!(restored.holder(NAME), Some(&granted));
    snapshot.truncate(snapshot.len() / 2);
    let damaged = restored.restore(9, &mut snapshot.as_slice());
    assert!(
        matches!(damaged, Err(RestoreError::Invalid(_))),
        "{damaged:?}"
    );

    // Lease time runs on committed ticks only; the holder's release frees the lease at
    // once, and the next grant has a larger token.
    assert_eq!(leases.apply(10, &bytes(&Command::Tick)).unwrap(), None);
    assert_eq!(leases.now, 1);
    let release = Command::Release(NAME.into(), "c1".into(), 7);
    assert_eq!(leases.apply(11, &bytes(&release)).unwrap(), None);
    let campaign = Command::Campaign(NAME.into(), "c2".into(), TTL);
    let next = leases.apply(12, &bytes(&campaign)).unwrap().unwrap();
    assert_eq!(
        (next.holder.as_str(), next.token, next.granted_at),
        ("c2", 12, 1)
    );
    check_history(&leases.grants);

    // A client's TTL as large as it gets neither overflows nor stops the node.
    let forever = Command::Campaign("other".into(), "c3".into(), u64::MAX);
    let grant = leases.apply(13, &bytes(&forever)).unwrap().unwrap();
    assert_eq!(grant.expires, u64::MAX);
    let renew = Command::Renew("other".into(), "c3".into(), 13, u64::MAX);
    assert_eq!(leases.apply(14, &bytes(&renew)).unwrap(), Some(grant));
}
