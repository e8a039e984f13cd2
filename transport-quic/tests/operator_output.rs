//! What the `coracle` command shows an operator and a log collector (issue 19): a node
//! started with `--log-format json` writes one JSON object a line, and
//! `coracle admin status --watch` refreshes its table until Ctrl-C or until its reader goes
//! away, one table after the other when standard output is not a terminal.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{leader, node_log, spawn_customised, spawn_with, wait_for, Proc, Setup, BIN};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Liveness bound of every wait below: generous, for a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(30);

/// Starts nodes 1..=3, node 1 with `--log-format json`, and waits for a leader.
fn cluster(setup: &Setup) -> Vec<Proc> {
    let mut procs = vec![spawn_customised(setup, 1, &setup.write_config(1), |c| {
        c.args(["--log-format", "json"])
    })];
    procs.extend((2..=3).map(|id| spawn_with(setup, id, &setup.write_config(id))));
    let client = setup.client("client-alice");
    wait_for(LIMIT, || leader(&client, &setup.addrs)).expect("a leader");
    client.close();
    procs
}

/// `coracle ARGS` run to its end: (success, stdout + stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `coracle admin status --watch --interval 200` against the cluster, stdout piped.
fn watch(setup: &Setup) -> Child {
    let nodes: Vec<String> = setup.addrs.iter().map(ToString::to_string).collect();
    Command::new(BIN)
        .args([
            "admin",
            "--nodes",
            &nodes.join(","),
            "--name",
            "ops",
            "--certs",
        ])
        .arg(setup.certs())
        .args(["status", "--watch", "--interval", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `n` whole tables from a watch's output (each ends with its counters' last line):
/// the text of each.
fn tables(out: &mut impl BufRead, n: usize) -> Vec<String> {
    let mut tables = Vec::new();
    let mut current = String::new();
    let mut counters = 0;
    let mut line = String::new();
    while tables.len() < n {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "output ended");
        current.push_str(&line);
        if line.contains("(transport counters)") {
            counters = 0;
        } else if line.trim_start().starts_with(|c: char| c.is_ascii_digit())
            && current.contains("(transport counters)")
        {
            counters += 1;
            if counters == 3 {
                tables.push(std::mem::take(&mut current));
            }
        }
    }
    tables
}

/// Waits for `child` to exit by itself; its exit status and standard error.
fn exited(child: Child) -> (bool, String) {
    let mut proc = Proc(Some(child));
    let mut stderr = proc.0.as_mut().unwrap().stderr.take().unwrap();
    let status = proc.wait_exit(LIMIT).expect("the watch exits by itself");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
    (status.success(), text)
}

#[test]
fn json_logs_and_a_watched_status_table() {
    let setup = Setup::new("operator", 3);
    let _procs = cluster(&setup);

    // Every line of node 1's log is a JSON object with level, target and fields.
    let lines = wait_for(LIMIT, || {
        let text = std::fs::read_to_string(node_log(&setup, 1)).unwrap();
        text.contains("log recovered").then_some(text)
    })
    .expect("node 1 logged its recovery");
    let mut recovered = false;
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let level = v["level"]
            .as_str()
            .unwrap_or_else(|| panic!("no level: {line}"));
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "{line}"
        );
        assert!(v["target"].as_str().is_some(), "no target: {line}");
        assert!(v["timestamp"].as_str().is_some(), "no timestamp: {line}");
        let fields = v["fields"]
            .as_object()
            .unwrap_or_else(|| panic!("no fields: {line}"));
        assert!(fields.contains_key("message"), "no message: {line}");
        if fields["message"] == "log recovered" {
            assert_eq!(fields["node"], 1, "{line}");
            assert_eq!(v["target"], "coracle_quic::server", "{line}");
            recovered = true;
        }
    }
    assert!(recovered);
    // A format that is none is a flag error naming the possible values.
    let (ok, text) = run(&["--log-format", "yaml", "admin", "status"]);
    assert!(
        !ok && text.contains("text") && text.contains("json"),
        "{text}"
    );

    // Not a terminal: one table after the other, each with every node; Ctrl-C ends it.
    let mut child = watch(&setup);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let seen = tables(&mut out, 3);
    for table in &seen {
        assert!(
            !table.contains("\x1b["),
            "no ANSI codes in a pipe: {table:?}"
        );
        assert!(
            table.contains("UTC (every 200 ms; Ctrl-C to stop)"),
            "{table}"
        );
        assert!(table.contains("Leader"), "{table}");
        for id in 1..=3 {
            assert!(
                table
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{id} "))),
                "node {id} in {table}"
            );
        }
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let (ok, err) = exited(child);
    assert!(ok, "Ctrl-C ends the watch cleanly: {err}");

    // Its reader gone (`| head`): the watch ends cleanly too.
    let mut child = watch(&setup);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    tables(&mut out, 1);
    drop(out);
    let (ok, err) = exited(child);
    assert!(ok, "a broken pipe ends the watch cleanly: {err}");

    // Bad flags: clear errors.
    for (args, why) in [
        (&["admin", "status", "--interval", "500"][..], "--watch"),
        (&["admin", "status", "--watch", "--interval", "50"], "100"),
        (
            &["admin", "status", "--watch", "--interval", "x"],
            "invalid",
        ),
    ] {
        let (ok, text) = run(args);
        assert!(!ok && text.contains(why), "{args:?}: {text}");
    }
}
