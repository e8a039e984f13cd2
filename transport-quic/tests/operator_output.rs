//! What the `coracle` command shows an operator and a log collector (issue 19): a node
//! started with `--log-format json` writes one JSON object a line, and
//! `coracle admin status --watch` refreshes its table until Ctrl-C or until its reader goes
//! away, one table after the other when standard output is not a terminal.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{
    admin_command, leader, node_log, spawn_customised, spawn_with, wait_for, Proc, Setup, BIN,
};
use std::io::Write as _;
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
    admin_command(setup, &[1, 2, 3])
        .args(["status", "--watch", "--interval", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The output of a child, read on a thread of its own so that a wait can be bounded. When
/// this is dropped, the thread stops at the next chunk and closes the pipe (its writer
/// then gets a broken pipe).
struct Output {
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Output {
    fn of(mut out: impl std::io::Read + Send + 'static) -> Output {
        let (tx, chunks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut chunk) {
                if tx.send(chunk[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Output {
            chunks,
            seen: Vec::new(),
        }
    }

    /// The first `n` whole frames, each starting with `marker` (a frame is whole once the
    /// next one has begun).
    fn frames(&mut self, marker: &str, n: usize) -> Vec<String> {
        let end = std::time::Instant::now() + LIMIT;
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if text.matches(marker).count() > n {
                return text
                    .split(marker)
                    .skip(1)
                    .take(n)
                    .map(|f| format!("{marker}{f}"))
                    .collect();
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(e) => {
                    let tail: String = text.chars().rev().take(2000).collect();
                    let tail: String = tail.chars().rev().collect();
                    panic!("{n} frames not seen ({e:?}); the output ends with: {tail:?}")
                }
            }
        }
    }
}

/// What starts each table of a watch into a pipe.
const PIPED: &str = "UTC (every 200 ms; Ctrl-C to stop)";
/// What starts each table of a watch on a terminal: ANSI home, clear.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Waits for `child` to exit by itself; its exit status and standard error.
fn exited(child: Child) -> (bool, String) {
    let mut proc = Proc(Some(child));
    let mut stderr = proc.0.as_mut().unwrap().stderr.take().unwrap();
    let status = proc.wait_exit(LIMIT).expect("the watch exits by itself");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
    (status.success(), text)
}

/// The watch on a pseudo-terminal: each table starts with the ANSI home+clear sequence;
/// Ctrl-C (typed: the terminal turns it into SIGINT) ends it with exit status 0. Skipped
/// with a message where `script` is missing.
fn terminal_watch(setup: &Setup) {
    if Command::new("script").arg("--version").output().is_err() {
        // Straight to the process's stderr: the harness hides `eprintln!` of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the terminal watch: no `script` (util-linux) on this machine"
        );
        return;
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut args = vec!["exec".to_string(), quote(BIN)];
    let admin = admin_command(setup, &[1, 2, 3]);
    args.extend(admin.get_args().map(|a| quote(&a.to_string_lossy())));
    args.extend(["status", "--watch", "--interval", "200"].map(String::from));
    let mut child = Command::new("script")
        .args(["-qec", &args.join(" "), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = Output::of(child.stdout.take().unwrap());
    for frame in out.frames(CLEAR, 2) {
        assert!(
            frame.contains(PIPED)
                && frame.contains("Leader")
                && frame.contains("(transport counters)"),
            "{frame:?}"
        );
    }
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"\x03").unwrap();
    let (ok, err) = exited(child);
    assert!(ok, "Ctrl-C on the terminal ends the watch cleanly: {err}");
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
            assert_eq!(v["target"], "coracle_quic::host::runtime", "{line}");
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
    let mut out = Output::of(child.stdout.take().unwrap());
    let seen = out.frames(PIPED, 3);
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
    let mut out = Output::of(child.stdout.take().unwrap());
    out.frames(PIPED, 1);
    drop(out);
    let (ok, err) = exited(child);
    assert!(ok, "a broken pipe ends the watch cleanly: {err}");

    // On a terminal (a pseudo-terminal from util-linux `script`): redrawn in place, and
    // Ctrl-C typed into the terminal ends it.
    terminal_watch(&setup);

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
