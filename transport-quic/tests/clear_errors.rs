//! Nonsense into the `coracle` command, as real processes: flags, configurations and
//! certificate files that make no sense each end in a clear error naming what is wrong
//! (exit 1, or 2 for a flag clap refuses), never a panic (exit 101) or an abort; and the
//! logs a node writes to a file say what happened, in plain text.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{node_log, spawn_node, spawn_with, wait_for, Setup, BIN};
use coracle_quic::certs::{Ca, Identity};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `coracle ARGS` in `dir` with `env`, standard input closed.
fn coracle_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    // Liveness bound: each of these fails at once; a hang is a failure too.
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Only the child this test started.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("coracle {} did not stop", shorten(&args.join(" ")));
        }
    }
}

/// At most 200 characters of `s`, for messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}... ({} characters)", &s[..i], s.chars().count()),
        None => s.to_string(),
    }
}

fn coracle(args: &[&str], dir: &Path) -> Output {
    coracle_env(args, dir, &[])
}

/// Asserts that `coracle ARGS` failed cleanly (exit 1 or 2, no panic) with `expected` in
/// its error.
#[track_caller]
fn fails_with(out: Output, args: &str, expected: &str) {
    let err = shorten(&String::from_utf8_lossy(&out.stderr));
    let code = out.status.code();
    assert!(
        matches!(code, Some(1 | 2)),
        "coracle {args}: exit {code:?}, stderr: {err}"
    );
    assert!(!err.contains("panicked"), "coracle {args}: {err}");
    assert!(
        err.contains(expected),
        "coracle {args}: {expected:?} not in: {err}"
    );
}

/// Every flag that takes a number, a name, an id or an address, given nonsense (the
/// first two panicked in certs.rs: "resulting value is out of range", exit 101).
#[test]
fn nonsense_flags_are_refused_without_a_panic() {
    let setup = Setup::new("flags", 1);
    let dir = setup.path();
    let certs = setup.certs();
    let certs = certs.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["certs", "init", "--dir", "new", "--days", "4294967295"],
            "days",
        ),
        (
            &["certs", "init", "--dir", "new", "--days", "100000000"],
            "days",
        ),
        (&["certs", "init", "--dir", "new", "--days", "0"], "0 days"),
        (&["certs", "init", "--dir", "new", "--days", "-1"], "-1"),
        (&["certs", "init", "--dir", "new", "--name", ""], "CA name"),
        (
            &[
                "certs",
                "init",
                "--dir",
                "new",
                "--name",
                &"x".repeat(100_000),
            ],
            "CA name",
        ),
        (
            &[
                "certs",
                "issue",
                "client",
                "x",
                "--dir",
                certs,
                "--days",
                "100000000",
            ],
            "days",
        ),
        (
            &[
                "certs", "issue", "client", "x", "--dir", certs, "--days", "0",
            ],
            "0 days",
        ),
        (
            &["certs", "issue", "client", "a b", "--dir", certs],
            "client name",
        ),
        (
            &["certs", "issue", "node", "0", "--dir", certs],
            "node ids start at 1",
        ),
        (&["certs", "issue", "node", "-1", "--dir", certs], "-1"),
        (
            &[
                "certs",
                "issue",
                "node",
                "18446744073709551616",
                "--dir",
                certs,
            ],
            "not a node id",
        ),
        (
            &["certs", "issue", "node", "", "--dir", certs],
            "not a node id",
        ),
        (
            &["certs", "issue", "node", "3", "--admin", "--dir", certs],
            "--admin",
        ),
        (
            &["certs", "issue", "node", "3", "--dir", "missing"],
            "missing",
        ),
        (&["kv", "--timeout-ms", "0", "get", "k"], "--timeout-ms"),
        (
            &["kv", "--timeout-ms", "18446744073709551615", "get", "k"],
            "--timeout-ms",
        ),
        (&["kv", "--nodes", "127.0.0.1:0", "get", "k"], "port 0"),
        (
            &["kv", "--nodes", "0.0.0.0:7001", "get", "k"],
            "names no host",
        ),
        (&["kv", "--nodes", "garbage", "get", "k"], "ip:port"),
        (&["kv", "list", "--limit", "0"], "--limit"),
        (&["admin", "promote", "0"], "node ids start at 1"),
        (&["admin", "remove", "x"], "not a node id"),
        (&["admin", "add-learner", "4", "garbage"], "ip:port"),
        (&["admin", "add-learner", "4", "127.0.0.1:0"], "port 0"),
        (&["admin", "isolate", "1,0"], "node ids start at 1"),
        (
            &["bench", "--nodes", "127.0.0.1:9", "--warmup", "1e300"],
            "--warmup",
        ),
        (
            &["bench", "--nodes", "127.0.0.1:9", "--duration", "1e300"],
            "--duration",
        ),
        (
            &["bench", "--nodes", "127.0.0.1:9", "--duration", "NaN"],
            "--duration",
        ),
        (
            &[
                "bench",
                "--nodes",
                "127.0.0.1:9",
                "--value-size",
                "100000000000000",
            ],
            "--value-size",
        ),
        (
            &["bench", "--nodes", "127.0.0.1:9", "--count", "0"],
            "--count",
        ),
        (
            &["bench", "--nodes", "127.0.0.1:9", "--connections", "0"],
            "--connections",
        ),
        (
            &["bench", "--election-timeout-ms", "0"],
            "--election-timeout-ms",
        ),
        (
            &["--log", "infoo", "certs", "init", "--dir", "new"],
            "not a level",
        ),
        (&["--log", "", "certs", "init", "--dir", "new"], "empty"),
        (
            &["--log", "a=b=c", "certs", "init", "--dir", "new"],
            "--log",
        ),
        (
            &["--log", "info,,debug", "certs", "init", "--dir", "new"],
            "--log",
        ),
    ];
    for (args, expected) in cases {
        fails_with(coracle(args, dir), &shorten(&args.join(" ")), expected);
    }
    // A garbage RUST_LOG is named as such (it was silently replaced by `info`).
    let out = coracle_env(
        &["certs", "init", "--dir", "new"],
        dir,
        &[("RUST_LOG", "verbose")],
    );
    fails_with(out, "RUST_LOG=verbose", "RUST_LOG");
    // Nothing was written by any of them.
    assert!(!dir.join("new").exists());
    // The longest validity there is works, and a certificate never outlives its CA.
    let ok = coracle(
        &[
            "certs", "issue", "client", "y", "--dir", certs, "--days", "365",
        ],
        dir,
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("valid until"));
}

/// `bench --count N` against a cluster that answers nothing stops after a call timeout
/// (30 s) without progress, with an error (it waited forever).
#[test]
fn a_counted_bench_against_no_cluster_gives_up() {
    let setup = Setup::new("bench-count", 1);
    let certs = setup.certs();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nodes = silent.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args([
            "bench",
            "--nodes",
            &nodes,
            "--certs",
            certs.to_str().unwrap(),
        ])
        .args([
            "--name",
            "alice",
            "--clients",
            "2",
            "--count",
            "5",
            "--warmup",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Liveness bound: 30 s of calls, then the stall is seen; 90 s is generous.
    let status = wait_for(Duration::from_secs(90), || child.try_wait().unwrap());
    if status.is_none() {
        let _ = child.kill();
        panic!("bench --count waited forever for a cluster that answers nothing");
    }
    let out = child.wait_with_output().unwrap();
    fails_with(out, "bench --count 5", "no request completed");
}

/// Writes `text` as a configuration next to the setup's certificates.
fn config_file(setup: &Setup, name: &str, text: &str) -> std::path::PathBuf {
    let path = setup.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Configurations that were accepted without a word, each refused at start with the key
/// it is about.
#[test]
fn nonsense_configurations_are_refused_naming_the_key() {
    let setup = Setup::new("configs", 3);
    let good = setup.config_text(1);
    let me = setup.addrs[0];
    let other_port = format!("127.0.0.1:{}", setup.addrs[2].port() + 100);
    let cases: Vec<(String, &str)> = vec![
        // `listen` is not where [[peers]] says this node is.
        (
            good.replacen(
                &format!("listen = \"{me}\""),
                &format!("listen = \"{other_port}\""),
                1,
            ),
            "listen",
        ),
        // This node is missing from [[peers]] (it counted itself as an extra voter).
        (
            good.replacen("id = 1\n", "id = 4\n", 1),
            "missing from [[peers]]",
        ),
        (good.replacen("id = 1\n", "id = 0\n", 1), "id = 0"),
        (
            good.clone() + "[storage]\nsegment_bytes = 0\n",
            "storage.segment_bytes",
        ),
        (
            good.replace("[raft]\n", "[raft]\nmax_entry_bytes = 0\n"),
            "raft.max_entry_bytes",
        ),
        (
            good.replace(
                "[transport]\n",
                "[transport]\nqueue = 9223372036854775807\n",
            ),
            "transport.queue",
        ),
        (
            good.replace("[raft]\n", "[raft]\ntick_ms = 0\n"),
            "raft.tick_ms",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = config_file(&setup, &format!("bad-{i}.toml"), text);
        let out = coracle(&["node", "--config", path.to_str().unwrap()], setup.path());
        fails_with(out, &format!("node with {key}"), key);
    }
    // Listening on every address with the port of its [[peers]] entry is legitimate.
    let any = good.replacen(
        &format!("listen = \"{me}\""),
        &format!("listen = \"0.0.0.0:{}\"", me.port()),
        1,
    );
    let path = config_file(&setup, "any.toml", &any);
    let mut node = spawn_with(&setup, 1, &path);
    let started = wait_for(Duration::from_secs(20), || {
        let log = std::fs::read_to_string(node_log(&setup, 1)).unwrap_or_default();
        log.contains("node started").then_some(())
    });
    node.kill();
    assert!(
        started.is_some(),
        "a node listening on 0.0.0.0 did not start"
    );
}

/// Certificate files that do not fit: each error names the file and what is wrong
/// ("no items found" and "cannot listen on ...: KeyMismatch" were all they got).
#[test]
fn wrong_certificate_files_are_named_at_start() {
    let setup = Setup::new("cert-files", 2);
    let good = setup.config_text(1);
    let cases = [
        (
            good.replace("certs/node-1.key", "certs/node-1.pem"),
            "holds a certificate, not a private key",
        ),
        (
            good.replace("certs/node-1.pem", "certs/node-1.key"),
            "holds a private key, not a certificate",
        ),
        (
            good.replace("certs/node-1.key", "certs/node-2.key"),
            "does not belong to certificate",
        ),
        (
            good.replace("certs/ca.pem", "certs/node-2.pem"),
            "not a CA certificate",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = config_file(&setup, &format!("files-{i}.toml"), text);
        let out = coracle(&["node", "--config", path.to_str().unwrap()], setup.path());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        fails_with(out, expected, expected);
        assert!(!err.contains("cannot listen"), "{err}");
    }
}

/// A dial whose TLS handshake fails is logged by the dialling node (it logged nothing):
/// node 1 dials node 2 (the lower id dials), whose certificate comes from another CA.
#[test]
fn a_failed_tls_dial_is_logged_by_the_dialling_node() {
    let setup = Setup::new("dial", 2);
    // Node 2 of another cluster's CA at node 2's address.
    let foreign = setup.path().join("foreign");
    let other = Ca::generate("other", 2).unwrap();
    other.write(&foreign).unwrap();
    other
        .issue(&Identity::Node(2), 1)
        .unwrap()
        .write(&foreign, "node-2")
        .unwrap();
    let text = setup.config_text(2).replace("certs/", "foreign/");
    let config = config_file(&setup, "foreign-2.toml", &text);
    let _node2 = spawn_with(&setup, 2, &config);
    let _node1 = spawn_node(&setup, 1);
    // Liveness bound: the first dial happens within a second; 20 s is generous.
    let logged = wait_for(Duration::from_secs(20), || {
        let log = std::fs::read_to_string(node_log(&setup, 1)).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("dial failed") && l.contains("WARN"))
            .map(str::to_string)
    });
    let log = std::fs::read_to_string(node_log(&setup, 1)).unwrap_or_default();
    let line = logged.unwrap_or_else(|| panic!("node 1 logged no failed dial:\n{log}"));
    assert!(line.contains("peer=2"), "{line}");
}

/// Logs written to a file are plain text (they held ANSI colour codes), and the transport
/// counters are in `coracle admin status`, stray datagrams included.
#[test]
fn node_logs_are_plain_text_and_admin_status_shows_the_counters() {
    let setup = Setup::new("plain", 1);
    let _node = spawn_node(&setup, 1);
    let client = setup.client("client-alice");
    wait_for(Duration::from_secs(20), || {
        smol::block_on(client.put("k", "v")).ok()
    })
    .expect("the node takes a write");
    client.close();
    let log = std::fs::read(node_log(&setup, 1)).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("node started"), "{text}");
    assert!(
        !log.contains(&0x1b),
        "ANSI escape codes in the log file:\n{text}"
    );

    // Garbage to the node's port, then the counters.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..10u8 {
        udp.send_to(&[i; 40], setup.addrs[0]).unwrap();
    }
    let nodes = setup.addrs[0].to_string();
    let certs = setup.certs();
    let status = wait_for(Duration::from_secs(10), || {
        let out = coracle(
            &[
                "admin",
                "--nodes",
                &nodes,
                "--certs",
                certs.to_str().unwrap(),
                "--name",
                "ops",
                "status",
            ],
            setup.path(),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The row of node 1 under the counters' header: stray datagrams is the 4th column.
        let counters = text.split("(transport counters)").nth(1)?.to_string();
        let row: Vec<u64> = counters
            .lines()
            .find(|l| l.trim_start().starts_with('1'))?
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        (row[3] >= 10).then_some(text)
    });
    assert!(
        status.is_some(),
        "admin status never showed the 10 stray datagrams"
    );
}
