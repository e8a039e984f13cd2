//! `coracle demo --script` end to end (3 node processes, every scenario, bounded in time),
//! and the fault-injection control it relies on: only an admin certificate may use it.
#![allow(clippy::unwrap_used)] // test code: a panic is the report

mod common;

use common::Setup;
use coracle_quic::protocol::{AdminOp, ErrorKind, Request, Response};
use coracle_quic::server::RunningNode;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coracle");

#[test]
fn demo_script_runs_every_scenario_and_exits_zero() {
    let mut child = Command::new(BIN)
        .args(["demo", "--script"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A hang bound, not a timing assertion: the script takes seconds.
    let end = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coracle demo --script did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "demo failed:\n{out}\n{err}");
    for scenario in [
        "leader elected",
        "writes committed",
        "replica crash",
        "leader crash",
        "network split",
        "rolled back",
        "cold restart",
        "every outcome as expected",
    ] {
        assert!(out.contains(scenario), "no {scenario:?} in:\n{out}");
    }
    assert!(!out.contains("[FAIL]"), "{out}");
}

#[test]
fn isolation_is_for_admin_certificates_only() {
    let setup = Setup::new("isolate", 1);
    let node = RunningNode::start(&setup.config(1)).unwrap();
    let addr = node.local_addr();
    let request = Request::Admin(AdminOp::Isolate { peers: vec![2] });
    smol::block_on(async {
        let alice = setup.client("client-alice");
        match alice.attempt(addr, &request).await.unwrap() {
            Response::Error {
                kind: ErrorKind::Forbidden,
                ..
            } => {}
            other => panic!("a plain client isolated a node: {other:?}"),
        }
        let ops = setup.client("admin-ops");
        assert_eq!(ops.attempt(addr, &request).await.unwrap(), Response::Done);
        let heal = Request::Admin(AdminOp::Isolate { peers: vec![] });
        assert_eq!(ops.attempt(addr, &heal).await.unwrap(), Response::Done);
        alice.close();
        ops.close();
    });
    node.shutdown().unwrap();
}
