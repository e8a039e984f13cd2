//! The metrics endpoint (`[metrics] listen`) of running nodes: a scrape over a plain TCP
//! GET, parsed strictly line by line; garbage requests; an address in use.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::scrape::{exchange, get, parse, scrape, scrape_raw, with_metrics};
use common::{wait_for, Setup};
use coracle_quic::config::NodeConfig;
use coracle_quic::server::{NodeError, RunningNode};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn a_scrape_of_a_running_cluster_shows_its_state() {
    let setup = Setup::new("metrics-scrape", 3);
    let nodes: Vec<RunningNode> = (1..=3)
        // Snapshots every few entries, so the scrape shows some.
        .map(|id| {
            let snapshots = "[storage]\nsnapshot_entries = 6\nsnapshot_keep_entries = 2\n";
            RunningNode::start(&with_metrics(&setup, id, snapshots)).unwrap()
        })
        .collect();
    let client = setup.client("client-alice");
    const WRITES: usize = 20;
    for i in 0..WRITES {
        smol::block_on(client.put(format!("k{i}"), "v")).unwrap();
    }
    let leader = common::leader(&client, &setup.addrs).unwrap();
    let l = leader.to_string();
    // A read the leader serves: writes sent to a follower are forwarded to the leader, so
    // the client above may never have learned which node leads.
    let at_leader = coracle_quic::client::Client::new(
        &setup.creds("client-alice"),
        vec![setup.addrs[leader as usize - 1]],
    )
    .unwrap();
    smol::block_on(at_leader.get("k0")).unwrap();
    at_leader.close();
    // The leader's loop copies its state (the gauges) every 10 ms at most, while event
    // counters count at once: wait for the last write to show in both (a generous bound;
    // the figures are checked below).
    let addr = nodes[leader as usize - 1].metrics_addr().unwrap();
    let s = wait_for(Duration::from_secs(10), || {
        let s = scrape(addr);
        let key = format!("coracle_proposals_total{{node=\"{l}\",outcome=\"committed\"}}");
        let commit = format!("coracle_commit_index{{node=\"{l}\"}}");
        let shown = |key: &str| s.get(key).copied().unwrap_or(0.0) >= WRITES as f64;
        (shown(&key) && shown(&commit)).then_some(s)
    })
    .expect("the leader's metrics show every write committed");
    let n = |name: &str| format!("{name}{{node=\"{l}\"}}");
    assert_eq!(
        get(&s, &format!("coracle_role{{node=\"{l}\",role=\"leader\"}}")),
        1.0
    );
    assert_eq!(
        get(
            &s,
            &format!("coracle_role{{node=\"{l}\",role=\"follower\"}}")
        ),
        0.0
    );
    assert_eq!(get(&s, &n("coracle_leader")), leader as f64);
    assert!(get(&s, &n("coracle_term")) >= 1.0);
    let commit = get(&s, &n("coracle_commit_index"));
    assert!(commit >= WRITES as f64, "commit {commit}");
    assert!(get(&s, &n("coracle_applied_index")) <= commit);
    assert!(get(&s, &n("coracle_last_index")) >= commit);
    assert!(get(&s, &n("coracle_elections_won_total")) >= 1.0);
    assert!(get(&s, &n("coracle_apply_seconds_count")) >= WRITES as f64);
    assert!(get(&s, &n("coracle_log_flush_seconds_count")) >= 1.0);
    assert!(get(&s, &n("coracle_log_flush_entries_sum")) >= WRITES as f64);
    assert!(get(&s, &n("coracle_log_disk_bytes")) > 0.0);
    assert_eq!(get(&s, &n("coracle_storage_stalled")), 0.0);
    assert!(
        get(
            &s,
            &format!("coracle_reads_total{{node=\"{l}\",outcome=\"served\"}}")
        ) >= 1.0
    );
    for peer in (1..=3u64).filter(|&p| p != leader) {
        let series = |m: &str| format!("{m}{{node=\"{l}\",peer=\"{peer}\"}}");
        assert!(get(&s, &series("coracle_peer_match_index")) >= 0.0);
        assert!(get(&s, &series("coracle_peer_lag_entries")) >= 0.0);
    }
    for reason in ["tls", "identity", "incarnation"] {
        let series =
            format!("coracle_refused_connections_total{{node=\"{l}\",reason=\"{reason}\"}}");
        assert_eq!(get(&s, &series), 0.0);
    }
    assert_eq!(get(&s, &n("coracle_malformed_frames_total")), 0.0);
    // At least the follower that committed the writes with it (the other may still be
    // connecting on a busy machine).
    assert!(get(&s, &n("coracle_peer_connections_total")) >= 1.0);
    get(&s, &n("coracle_reconnects_total"));
    get(&s, &n("coracle_peer_dials_total"));
    // A follower: its role, the same leader, and no replication progress of its own.
    let f = (1..=3u64).find(|&p| p != leader).unwrap();
    let fs = scrape(nodes[f as usize - 1].metrics_addr().unwrap());
    assert_eq!(
        get(
            &fs,
            &format!("coracle_role{{node=\"{f}\",role=\"follower\"}}")
        ),
        1.0
    );
    assert_eq!(
        get(&fs, &format!("coracle_leader{{node=\"{f}\"}}")),
        leader as f64
    );
    assert!(!fs.keys().any(|k| k.starts_with("coracle_peer_match_index")));
    // Every node snapshotted (every 6 entries, on its own phase).
    for (i, node) in nodes.iter().enumerate() {
        let id = i + 1;
        let s = wait_for(Duration::from_secs(10), || {
            let s = parse(&node.metrics_text()?).ok()?;
            let taken = s.get(&format!("coracle_snapshots_total{{node=\"{id}\"}}"))?;
            (*taken >= 1.0).then_some(s)
        })
        .unwrap_or_else(|| panic!("node {id} took no snapshot"));
        assert!(get(&s, &format!("coracle_snapshot_bytes{{node=\"{id}\"}}")) > 0.0);
        assert!(
            get(
                &s,
                &format!("coracle_snapshot_seconds_count{{node=\"{id}\"}}")
            ) >= 1.0
        );
    }
    // The same figures through the library.
    let text = nodes[f as usize - 1].metrics_text().unwrap();
    let lib = parse(&text).unwrap();
    assert_eq!(
        get(
            &lib,
            &format!("coracle_role{{node=\"{f}\",role=\"follower\"}}")
        ),
        1.0
    );
    client.close();
    for node in nodes {
        node.shutdown().unwrap();
    }
}

/// A follower that is down lacks the bytes of every write made meanwhile: the leader's
/// `coracle_peer_lag_bytes` and its host status (`MemberStatus::lag_bytes`) say how many
/// (each write's value, plus its command and record framing); once it is back and caught
/// up, none.
#[test]
fn the_leader_shows_the_bytes_a_follower_lacks() {
    let setup = Setup::new("metrics-lag-bytes", 3);
    let cfgs: Vec<NodeConfig> = (1..=3).map(|id| with_metrics(&setup, id, "")).collect();
    let mut nodes: Vec<Option<RunningNode>> = cfgs
        .iter()
        .map(|c| Some(RunningNode::start(c).unwrap()))
        .collect();
    let client = setup.client("client-alice");
    smol::block_on(client.put("first", "v")).unwrap();
    let leader = common::leader(&client, &setup.addrs).unwrap();
    let down = (1..=3u64).find(|&p| p != leader).unwrap();
    nodes[down as usize - 1].take().unwrap().shutdown().unwrap();
    const WRITES: usize = 30;
    const VALUE: usize = 10_000;
    for i in 0..WRITES {
        smol::block_on(client.put(format!("k{i}"), vec![7u8; VALUE])).unwrap();
    }
    let (addr, handle) = {
        let l = nodes[leader as usize - 1].as_ref().unwrap();
        (l.metrics_addr().unwrap(), l.handle())
    };
    let series = |m: &str| format!("{m}{{node=\"{leader}\",peer=\"{down}\"}}");
    // The gauges are copied every 10 ms at most: wait for the last write to show.
    let s = wait_for(Duration::from_secs(10), || {
        let s = scrape(addr);
        (get(&s, &series("coracle_peer_lag_entries")) >= WRITES as f64).then_some(s)
    })
    .expect("the leader shows the writes the follower lacks");
    let bytes = get(&s, &series("coracle_peer_lag_bytes"));
    let (least, most) = (WRITES * VALUE, WRITES * (VALUE + 200) + 1000);
    assert!(
        bytes >= least as f64 && bytes <= most as f64,
        "lag of {bytes} bytes, expected {least}..={most}"
    );
    let status = smol::block_on(handle.status()).unwrap();
    let member = status.members.iter().find(|m| m.id == down).unwrap();
    let lag = member.lag_bytes.unwrap();
    assert!(
        lag >= least as u64 && lag <= most as u64,
        "status: {lag} bytes"
    );
    // Back, it catches up: no lag left (a generous bound on a shared machine).
    // (Its address may take a moment to be free again: the port is retried.)
    let back = wait_for(Duration::from_secs(10), || {
        RunningNode::start(&cfgs[down as usize - 1]).ok()
    });
    nodes[down as usize - 1] = Some(back.expect("the follower restarts"));
    wait_for(Duration::from_secs(20), || {
        let s = scrape(addr);
        (get(&s, &series("coracle_peer_lag_bytes")) == 0.0).then_some(())
    })
    .expect("the follower caught up within 20 s");
    client.close();
    for node in nodes.into_iter().flatten() {
        node.shutdown().unwrap();
    }
}

#[test]
fn garbage_to_the_metrics_endpoint_gets_4xx_or_a_closed_connection() {
    let setup = Setup::new("metrics-garbage", 1);
    let node = RunningNode::start(&with_metrics(&setup, 1, "")).unwrap();
    let addr = node.metrics_addr().unwrap();
    let huge_header = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let many_headers = format!(
        "GET /metrics HTTP/1.1\r\n{}\r\n",
        "X-A: b\r\n".repeat(5_000)
    );
    let binary: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "POST",
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        ),
        (
            "DELETE",
            b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "another path",
            b"GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("a huge header", huge_header.into_bytes()),
        ("many headers", many_headers.into_bytes()),
        ("binary", binary),
        ("not HTTP", b"hello there\r\n\r\n".to_vec()),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        ("a bad version", b"GET /metrics HTTP/9.9\r\n\r\n".to_vec()),
        ("NUL bytes", b"GET /met\0rics HTTP/1.1\r\n\r\n".to_vec()),
    ];
    for (what, request) in &cases {
        let answer = exchange(addr, request);
        let text = String::from_utf8_lossy(&answer);
        let refused = answer.is_empty() || text.starts_with("HTTP/1.1 4");
        assert!(refused, "{what}: {text:.200}");
    }
    // Half a request, then the client goes away; and more connections than served at
    // once, held open.
    drop(TcpStream::connect(addr).unwrap().write_all(b"GET /met"));
    let held: Vec<TcpStream> = (0..coracle_quic::metrics::MAX_CONNECTIONS + 8)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    drop(held);
    assert!(!node.is_finished(), "the node keeps running");
    let ready = wait_for(Duration::from_secs(10), || {
        let (code, _, body) = scrape_raw(addr)?;
        (code == 200).then(|| parse(&body).unwrap())
    });
    assert!(ready.is_some(), "scrapes work again");
    // The node still takes writes.
    let client = setup.client("client-alice");
    assert!(wait_for(Duration::from_secs(20), || smol::block_on(
        client.put("a", "b")
    )
    .ok())
    .is_some());
    client.close();
    node.shutdown().unwrap();
}

#[test]
fn a_metrics_address_in_use_stops_the_start_naming_it() {
    let setup = Setup::new("metrics-in-use", 1);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = setup.config_text(1) + &format!("[metrics]\nlisten = \"{addr}\"\n");
    let cfg = NodeConfig::parse(&text, setup.path()).unwrap();
    match RunningNode::start(&cfg) {
        Err(e @ NodeError::Metrics(_)) => {
            let m = e.to_string();
            assert!(
                m.contains(&addr.to_string()) && m.contains("metrics"),
                "{m}"
            );
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("started with its metrics address in use"),
    }
    // Nothing was started: the data directory and the node's address are free.
    assert!(!setup.path().join("data/node-1").join("hard_state").exists());
    let node = RunningNode::start(&setup.config(1)).unwrap();
    assert_eq!(node.metrics_addr(), None);
    assert_eq!(node.metrics_text(), None);
    node.shutdown().unwrap();
}
