//! The `coracle` command as real processes on 127.0.0.1: a 3-node cluster elects a leader,
//! commits writes made through the client library, survives `kill -9` of its leader with
//! every acknowledged write kept, and the killed node catches up after a restart. Plus the
//! command line itself: certificates, kv, admin, clean shutdown on SIGINT and clear errors.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{spawn_node, wait_for, writes_survive_a_leader_kill, Proc, Setup, BIN};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn three_processes_elect_commit_and_survive_a_leader_kill() {
    let setup = Setup::new("procs", 3);
    let mut procs: Vec<Proc> = (1..=3).map(|id| spawn_node(&setup, id)).collect();
    let client = setup.client("client-alice");
    let (first, second) = writes_survive_a_leader_kill(&setup, &mut procs, &client, 20);
    smol::block_on(async {
        let listed = client
            .list("k", 100, coracle_quic::protocol::Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(listed.len(), 40);
    });

    // The killed node restarts from its data directory and catches up.
    procs[first as usize - 1] = spawn_node(&setup, first);
    let addr = setup.addrs[first as usize - 1];
    let caught_up = wait_for(Duration::from_secs(20), || {
        smol::block_on(async {
            let leader_status = client
                .status_of(setup.addrs[second as usize - 1])
                .await
                .ok()?;
            let s = client.status_of(addr).await.ok()?;
            (s.applied >= leader_status.commit && s.leader == Some(second)).then_some(())
        })
    });
    assert!(
        caught_up.is_some(),
        "restarted node {first} did not catch up"
    );
}

fn coracle(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn the_command_line_issues_certificates_serves_kv_and_shuts_down_cleanly() {
    let setup = Setup::new("cli", 1);
    let dir = setup.path().join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(coracle(&["certs", "init", "--dir", "certs"], &dir));
    ok(coracle(
        &["certs", "issue", "node", "1", "--dir", "certs"],
        &dir,
    ));
    ok(coracle(
        &["certs", "issue", "client", "bob", "--dir", "certs"],
        &dir,
    ));
    ok(coracle(
        &[
            "certs", "issue", "client", "root", "--admin", "--dir", "certs",
        ],
        &dir,
    ));
    // Keys are never overwritten.
    assert!(!coracle(&["certs", "init", "--dir", "certs"], &dir)
        .status
        .success());

    let addr = setup.addrs[0].to_string();
    let config = format!(
        "id = 1\ncluster_id = 1\nlisten = \"{addr}\"\ndata_dir = \"data\"\n\
         [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-1.pem\"\nkey = \"certs/node-1.key\"\n\
         [raft]\nelection_timeout_ms = 100\nheartbeat_ms = 20\n"
    );
    std::fs::write(dir.join("node.toml"), config).unwrap();
    let mut node = Command::new(BIN)
        .args(["node", "--config", "node.toml"])
        .current_dir(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let kv = |args: &[&str]| {
        let mut all = vec!["kv", "--nodes", &addr, "--name", "bob"];
        all.extend_from_slice(args);
        coracle(&all, &dir)
    };
    let put = wait_for(Duration::from_secs(20), || {
        let o = kv(&["put", "--previous", "colour", "blue"]);
        o.status.success().then_some(o)
    })
    .expect("the node takes writes");
    assert!(String::from_utf8_lossy(&put.stdout).contains("previous: (none)"));
    assert_eq!(ok(kv(&["get", "colour"])).trim(), "blue");
    ok(kv(&[
        "cas",
        "colour",
        "--expected",
        "blue",
        "--new",
        "green",
    ]));
    assert!(
        !kv(&["cas", "colour", "--expected", "blue", "--new", "red"])
            .status
            .success()
    );
    assert_eq!(
        ok(kv(&["get", "colour", "--consistency", "stale"])).trim(),
        "green"
    );
    // Without --previous, a put does not ask for (nor print) the value it replaced.
    assert_eq!(ok(kv(&["put", "shape", "square"])).trim(), "ok");
    assert_eq!(
        ok(kv(&["put", "--previous", "shape", "round"])).trim(),
        "previous: square"
    );
    assert_eq!(ok(kv(&["list", "s"])).trim(), "shape\tround");
    assert_eq!(
        ok(kv(&["del", "--previous", "shape"])).trim(),
        "deleted: round"
    );
    assert_eq!(ok(kv(&["del", "shape"])).trim(), "ok");
    assert!(!kv(&["get", "shape"]).status.success());

    let status = ok(coracle(
        &["admin", "--nodes", &addr, "--name", "root", "status"],
        &dir,
    ));
    assert!(status.contains("Leader"), "{status}");
    // Membership changes are checked against the configuration (issue 15, item 5: `promote
    // 9` once said "done" and added a voter that does not exist).
    let admin = |args: &[&str]| {
        let mut all = vec![
            "admin",
            "--nodes",
            &addr,
            "--name",
            "root",
            "--timeout-ms",
            "3000",
        ];
        all.extend_from_slice(args);
        coracle(&all, &dir)
    };
    for (args, expected) in [
        (&["promote", "9"][..], "no such member"),
        (&["promote", "1"][..], "already a member"),
        (&["remove", "9"][..], "no such member"),
        (&["remove", "1"][..], "no voter"),
        (&["add-learner", "1", "127.0.0.1:9"][..], "already a member"),
        (&["transfer", "9"][..], "not another voting member"),
        (&["transfer", "1"][..], "not another voting member"),
    ] {
        let refused = admin(args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let status = ok(admin(&["status"]));
    let node_line = status.lines().find(|l| l.contains("Leader")).unwrap_or("");
    assert!(
        node_line.trim_end().ends_with("  1"),
        "only node 1 is a member: {status}"
    );
    // A plain client may not run admin operations.
    let denied = coracle(
        &["admin", "--nodes", &addr, "--name", "bob", "transfer", "2"],
        &dir,
    );
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Forbidden"));

    // A second node on the same data directory is refused with a clear message.
    let locked = coracle(&["node", "--config", "node.toml"], &dir);
    assert!(!locked.status.success());
    let msg = String::from_utf8_lossy(&locked.stderr);
    assert!(
        msg.contains("data directory") && msg.contains("LOCK"),
        "{msg}"
    );

    // Ctrl-C: a clean shutdown, exit 0.
    let pid = node.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_for(Duration::from_secs(10), || node.try_wait().unwrap());
    let status = status.unwrap_or_else(|| {
        let _ = node.kill();
        panic!("the node did not stop on SIGINT")
    });
    assert!(status.success());

    // The write survived the restart-less shutdown: start again and read it.
    let missing_cert = std::fs::read_to_string(dir.join("node.toml"))
        .unwrap()
        .replace("node-1.pem", "node-9.pem");
    std::fs::write(dir.join("bad.toml"), missing_cert).unwrap();
    let bad = coracle(&["node", "--config", "bad.toml"], &dir);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("node-9.pem"));
    std::fs::write(dir.join("typo.toml"), "id = 1\nclusterid = 1\n").unwrap();
    let typo = coracle(&["node", "--config", "typo.toml"], &dir);
    assert!(String::from_utf8_lossy(&typo.stderr).contains("bad configuration"));
}
