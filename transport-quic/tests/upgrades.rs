//! Rolling upgrades with real node processes (issue 19): nodes announce their protocol and
//! storage versions in the hello; a node of a release with no version in common is refused
//! (both ends log both versions, the refusal is counted) while the others keep their
//! quorum and serve writes, and a node of the next release is taken. The data directory
//! carries its format: a newer one, or the previous release's (no marker; its command
//! entries are in the format before the host's), is refused with what to do and left as
//! it was; garbage in the marker is refused. Versions are claimed through `CORACLE_TEST_VERSIONS` (for tests only).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::{leader, node_log, spawn_customised, spawn_with, wait_for, Proc, Setup, BIN};
use coracle_quic::client::Client;
use coracle_quic::hello::{PROTOCOL, TEST_VERSIONS_ENV};
use coracle_quic::protocol::NodeStatus;
use coracle_quic::storage::format;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Liveness bound of every wait below: generous, for a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(30);

fn log_of(setup: &Setup, id: u64) -> String {
    std::fs::read_to_string(node_log(setup, id)).unwrap_or_default()
}

fn logs(setup: &Setup) -> String {
    (1..=3)
        .map(|id| format!("--- node {id}\n{}", log_of(setup, id)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn status(setup: &Setup, client: &Client, id: u64) -> Option<NodeStatus> {
    smol::block_on(client.status_of(setup.addrs[id as usize - 1])).ok()
}

/// Node `id` claiming `versions` (a `CORACLE_TEST_VERSIONS` value).
fn start_claiming(setup: &Setup, id: u64, versions: &str) -> Proc {
    spawn_customised(setup, id, &setup.write_config(id), |c| {
        c.env(TEST_VERSIONS_ENV, versions)
    })
}

/// Puts `k{range}` through `client`, each acknowledged.
fn put_range(setup: &Setup, client: &Client, range: std::ops::Range<usize>) {
    smol::block_on(async {
        for i in range {
            if let Err(e) = client.put(format!("k{i}"), format!("v{i}")).await {
                panic!("put k{i}: {e}\n{}", logs(setup));
            }
        }
    });
}

/// Waits until node `id` has applied what the leader committed and is connected to every
/// member: it was taken by its peers.
fn wait_taken(setup: &Setup, client: &Client, id: u64) {
    let l = wait_for(LIMIT, || leader(client, &setup.addrs)).expect("a leader");
    let commit = status(setup, client, l).unwrap().commit;
    wait_for(LIMIT, || {
        status(setup, client, id)
            .filter(|s| s.applied >= commit && s.members.iter().all(|m| m.connected))
    })
    .unwrap_or_else(|| panic!("node {id} was not taken\n{}", logs(setup)));
}

/// Runs `coracle node` for node `id`, expecting it to refuse to start; its standard error.
fn refused(setup: &Setup, id: u64, env: Option<&str>) -> String {
    let err = setup.path().join(format!("refused-{id}.err"));
    let mut command = Command::new(BIN);
    if let Some(v) = env {
        command.env(TEST_VERSIONS_ENV, v);
    }
    let mut node = Proc(Some(
        command
            .args(["node", "--config"])
            .arg(setup.write_config(id))
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    ));
    let status = node.wait_exit(LIMIT);
    let text = std::fs::read_to_string(&err).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "node {id} started: {text}"
    );
    text
}

/// Every file of `dir` but the lock, with its bytes.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("LOCK"))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

/// A `format` file naming `version` (the layout of `coracle_quic::storage::format`).
fn format_file(version: u32) -> Vec<u8> {
    let mut b = b"CORAFRMT".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn an_incompatible_node_is_refused_and_the_next_release_is_taken() {
    let setup = Setup::new("versions", 3);
    let mut procs: Vec<Proc> = (1..=2)
        .map(|id| spawn_with(&setup, id, &setup.write_config(id)))
        .collect();
    // Node 3 plays a release two ahead: it dropped the protocol this build speaks.
    let newer = format!("protocol={}..{}", PROTOCOL + 1, PROTOCOL + 2);
    let mut third = start_claiming(&setup, 3, &newer);
    let client = Client::new(&setup.creds("client-alice"), setup.addrs[..2].to_vec())
        .unwrap()
        .with_timeout(Duration::from_secs(20))
        .with_attempt_timeout(Duration::from_secs(1));
    // Nodes 1 and 2 keep their quorum and serve writes.
    put_range(&setup, &client, 0..20);
    let refused_both_ways = wait_for(LIMIT, || {
        let (one, three) = (log_of(&setup, 1), log_of(&setup, 3));
        (one.contains("refusing node 3: no protocol version in common")
            && one.contains(&format!(
                "this node speaks protocol {PROTOCOL} (only) and reads storage format {} (and down to {}); the peer speaks protocol {} (and down to {})",
                format::CURRENT,
                format::OLDEST,
                PROTOCOL + 2,
                PROTOCOL + 1
            ))
            && three.contains("no protocol version in common")
            && three.contains(&format!("this node speaks protocol {}", PROTOCOL + 2)))
        .then_some(())
    });
    assert!(refused_both_ways.is_some(), "{}", logs(&setup));
    let s1 = status(&setup, &client, 1).unwrap();
    assert!(s1.refused_connections >= 1, "counted: {s1:?}");
    assert!(
        s1.members.iter().any(|m| m.id == 3 && !m.connected),
        "node 3 is not connected: {s1:?}"
    );
    let s3 = status(&setup, &client, 3).unwrap();
    assert_eq!(s3.applied, 0, "node 3 received no entry: {s3:?}");
    put_range(&setup, &client, 20..40);
    third.kill();

    // A value that is not one stops `coracle node` with a clear error.
    for bad in ["protocol=0", "protocol", "protocol=3..2", "colour=blue"] {
        let text = refused(&setup, 3, Some(bad));
        assert!(
            text.contains(TEST_VERSIONS_ENV) && text.contains(bad),
            "{bad}: {text}"
        );
    }

    // Node 3 as the next release (one protocol and one format ahead, still handling this
    // release's): taken, it catches up.
    let next = format!(
        "protocol={PROTOCOL}..{},storage={}..{}",
        PROTOCOL + 1,
        format::CURRENT,
        format::CURRENT + 1
    );
    let mut third = start_claiming(&setup, 3, &next);
    wait_taken(&setup, &client, 3);
    put_range(&setup, &client, 40..45);
    third.kill();

    // Its data directory written by a newer build: refused with what to do, unchanged.
    let dir = setup.path().join("data/node-3");
    let marker = dir.join("format");
    assert_eq!(
        std::fs::read(&marker).unwrap(),
        format_file(format::CURRENT)
    );
    std::fs::write(&marker, format_file(format::CURRENT + 1)).unwrap();
    let before = contents(&dir);
    let text = refused(&setup, 3, None);
    assert!(
        text.contains(&format!(
            "data directory format {} is newer than this binary supports ({}); upgrade coracle",
            format::CURRENT + 1,
            format::CURRENT
        )),
        "{text}"
    );
    assert_eq!(
        contents(&dir),
        before,
        "the newer directory is left as it was"
    );

    // Garbage in the marker: refused, naming the file.
    for garbage in [&b""[..], b"2\n", &[0xff; 16]] {
        std::fs::write(&marker, garbage).unwrap();
        let text = refused(&setup, 3, None);
        assert!(
            text.contains("corrupt") && text.contains(&marker.display().to_string()),
            "{garbage:?}: {text}"
        );
    }

    // The previous release's directory (no marker: command entries in the format before
    // the host's): refused with what to do, nothing written.
    std::fs::remove_file(&marker).unwrap();
    let before = contents(&dir);
    let text = refused(&setup, 3, None);
    assert!(
        text.contains("data directory format 1 was written by an earlier release")
            && text.contains("new, empty data directory"),
        "{text}"
    );
    assert_eq!(
        contents(&dir),
        before,
        "the older directory is left as it was"
    );
    std::fs::write(&marker, format_file(format::CURRENT)).unwrap();
    let mut third = spawn_with(&setup, 3, &setup.write_config(3));
    wait_taken(&setup, &client, 3);
    put_range(&setup, &client, 45..50);
    smol::block_on(async {
        for i in 0..50 {
            let v = client.get(format!("k{i}")).await.unwrap();
            assert_eq!(v, Some(format!("v{i}").into_bytes()), "k{i}");
        }
    });
    third.kill();
    procs.clear();
    client.close();
}
