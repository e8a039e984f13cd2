//! A leader whose disk hangs: after `storage.stall_timeout_ms` it steps down and stays
//! out of elections, the other two elect a leader and writes resume; once its disk
//! answers it rejoins and catches up. Twice: with the flush held in-process
//! (`RunningNode::hold_flushes`, which stops the fsync thread before the write and its
//! `fdatasync`), and on a really stalled device: the leader's data directory on ext4 over
//! a device-mapper `delay` target on a loop device, created and removed by the test, whose
//! I/O is delayed by 10 s while it is stalled.
//!
//! The real device needs root, `losetup`, `dmsetup`, `mkfs.ext4`, `mount`, a loop device
//! and a kernel with device-mapper and its `delay` target (`dm_delay`). Where one is
//! missing the test prints `SKIPPED: ...` naming it and passes, unless
//! `CORACLE_DM_REQUIRED=1`, which makes a skip a failure (set it where the machine has
//! them; the CI machines' kernel has no device-mapper, so `.ci/run` does not).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the report

mod common;

use common::scrape::{get, scrape, with_metrics};
use common::{wait_for, Setup};
use coracle_quic::client::Client;
use coracle_quic::config::NodeConfig;
use coracle_quic::protocol::AdminOp;
use coracle_quic::server::{NodeError, RunningNode};
use coracle_quic::storage::FileLogError;
use std::io::Write as _;
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
    stalled_leader_steps_down_and_rejoins(&setup, &nodes, &client, old, || {
        let hold = nodes[old as usize - 1].hold_flushes();
        Box::new(move || drop(hold))
    });
    client.close();
    for node in nodes {
        node.shutdown().unwrap();
    }
}

/// A follower whose disk hangs is shut down: it gives up its last flush after the stall
/// timeout rather than wait for the disk for ever, and says why. The flush it gave up keeps
/// the data directory locked until the disk answers; then the node restarts from it,
/// having lost nothing, and catches up.
#[test]
fn a_node_whose_disk_hangs_shuts_down_after_the_stall_timeout() {
    let setup = Setup::new("disk-stall-shutdown", 3);
    let mut nodes: Vec<Option<RunningNode>> = (1..=3)
        .map(|id| Some(RunningNode::start(&config(&setup, id)).unwrap()))
        .collect();
    let client = setup.client("client-alice");
    smol::block_on(client.put("before", "1")).unwrap();
    let leader = common::leader(&client, &setup.addrs).unwrap();
    let stalled = if leader == 1 { 2 } else { 1 };
    let node = nodes[stalled as usize - 1].take().unwrap();
    let hold = node.hold_flushes();
    // The others commit these; the stalled node's flush of them hangs.
    for i in 0..5 {
        smol::block_on(client.put(format!("k{i}"), "v")).unwrap();
    }
    let metrics = node.metrics_addr().unwrap();
    let stalled_gauge = format!("coracle_storage_stalled{{node=\"{stalled}\"}}");
    wait_for(Duration::from_secs(10), || {
        (get(&scrape(metrics), &stalled_gauge) == 1.0).then_some(())
    })
    .expect("the node's flush hangs");
    // Shut down on another thread: a shutdown that waited for the disk would never end.
    let (done, outcome) = std::sync::mpsc::channel();
    let asked = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(node.shutdown());
    });
    let result = outcome
        .recv_timeout(Duration::from_secs(30))
        .expect("the shutdown waits for a disk that hangs");
    let took = asked.elapsed();
    match result {
        Err(e @ NodeError::DiskStalled { .. }) => {
            assert!(e.to_string().contains("storage.stall_timeout_ms"), "{e}")
        }
        other => panic!("shut down with {other:?}, not DiskStalled"),
    }
    // The flush given up still holds the directory: nothing opens it meanwhile.
    match RunningNode::start(&config(&setup, stalled)) {
        Err(NodeError::Storage(FileLogError::Locked(_))) => {}
        other => panic!(
            "restarted while the given-up flush may still write: {:?}",
            other.err()
        ),
    }
    // More writes while it is down; then its disk answers and it comes back.
    smol::block_on(client.put("while-down", "3")).unwrap();
    drop(hold);
    let restarted = wait_for(Duration::from_secs(10), || {
        RunningNode::start(&config(&setup, stalled)).ok()
    })
    .expect("the directory is let go once the flush is done");
    let addr = setup.addrs[stalled as usize - 1];
    let caught_up = wait_for(Duration::from_secs(30), || {
        let s = smol::block_on(client.status_of(addr)).ok()?;
        let l = smol::block_on(client.status_of(setup.addrs[leader as usize - 1])).ok()?;
        (s.applied >= l.commit).then_some(())
    });
    assert!(
        caught_up.is_some(),
        "node {stalled} caught up after its restart"
    );
    nodes[stalled as usize - 1] = Some(restarted);
    for key in ["before", "k4", "while-down"] {
        assert!(smol::block_on(client.get(key)).unwrap().is_some(), "{key}");
    }
    eprintln!(
        "shutdown of node {stalled} on a disk that hangs: {} ms (stall timeout {STALL_MS} ms)",
        took.as_millis()
    );
    client.close();
    for node in nodes.into_iter().flatten() {
        node.shutdown().unwrap();
    }
}

/// The leader `old` of `nodes` has its disk stalled by `stall`, which returns what heals
/// it: writes resume through a new leader, the stalled node says so in its metrics, and
/// once healed it rejoins as a follower and catches up.
fn stalled_leader_steps_down_and_rejoins<'a>(
    setup: &Setup,
    nodes: &[RunningNode],
    client: &Client,
    old: u64,
    stall: impl FnOnce() -> Box<dyn FnOnce() + 'a>,
) {
    let heal = stall();
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
        common::leader(client, &setup.addrs).filter(|&l| l != old)
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
    heal();
    let caught_up = wait_for(Duration::from_secs(60), || {
        let s = smol::block_on(client.status_of(setup.addrs[old as usize - 1])).ok()?;
        let l = smol::block_on(client.status_of(setup.addrs[new as usize - 1])).ok()?;
        (s.leader.is_some() && s.applied >= l.commit && l.commit > 0).then_some(s)
    });
    assert!(
        caught_up.is_some(),
        "node {old} did not rejoin within 60 s (generous) after its disk answered"
    );
    let healthy = wait_for(Duration::from_secs(30), || {
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
}

/// Node 1's data directory on a device-mapper `delay` device over a loop device (see the
/// module docs); node 1 is made the leader, then its device delays every I/O by 10 s.
#[test]
fn a_leader_on_a_really_stalled_device_steps_down_and_writes_resume() {
    let required = std::env::var("CORACLE_DM_REQUIRED").is_ok_and(|v| v == "1");
    let missing = dm::missing();
    if !missing.is_empty() {
        let message = format!(
            "SKIPPED: the real stalled device test (device-mapper delay on a loop device): \
             missing {}",
            missing.join(", ")
        );
        assert!(!required, "{message}, and CORACLE_DM_REQUIRED=1");
        // Straight to the process's stderr: the test harness captures `eprintln!` of a
        // test that passes, and a skip must not look like a pass.
        let _ = writeln!(std::io::stderr(), "{message}");
        return;
    }
    let setup = Setup::new("disk-stall-dm", 3);
    // Declared before the nodes: dropped after them (unmounted once they are gone).
    let device = dm::DelayDevice::create(&setup.path().join("dm")).unwrap();
    let nodes: Vec<RunningNode> = (1..=3)
        .map(|id| {
            let mut cfg = config(&setup, id);
            if id == 1 {
                cfg.data_dir = device.mount().join("node-1");
            }
            RunningNode::start(&cfg).unwrap()
        })
        .collect();
    let client = setup.client("admin-ops");
    smol::block_on(client.put("before", "1")).unwrap();
    // Node 1 leads (its disk is the one that stalls).
    let led = wait_for(Duration::from_secs(30), || {
        if common::leader(&client, &setup.addrs) != Some(1) {
            let _ = smol::block_on(client.admin(AdminOp::Transfer { id: 1 }));
        }
        (common::leader(&client, &setup.addrs) == Some(1)).then_some(())
    });
    assert!(led.is_some(), "node 1 did not become the leader");
    smol::block_on(client.put("on node 1", "1")).unwrap();
    stalled_leader_steps_down_and_rejoins(&setup, &nodes, &client, 1, || {
        device.set_delay_ms(10_000).unwrap();
        Box::new(|| device.set_delay_ms(0).unwrap())
    });
    client.close();
    for node in nodes {
        node.shutdown().unwrap();
    }
}

/// A device-mapper `delay` device over a loop device, with ext4 on it, mounted.
mod dm {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Runs `program args`; its standard output, or what went wrong.
    fn run(program: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn on_path(program: &str) -> bool {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
    }

    fn delay_target() -> bool {
        run("dmsetup", &["targets"]).is_ok_and(|t| t.lines().any(|l| l.starts_with("delay")))
    }

    /// What this machine lacks to run the test (empty: nothing).
    pub fn missing() -> Vec<String> {
        let mut missing = Vec::new();
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        if !root {
            missing.push("root (it creates loop and device-mapper devices)".to_string());
        }
        for tool in ["losetup", "dmsetup", "mkfs.ext4", "mount", "umount"] {
            if !on_path(tool) {
                missing.push(format!(
                    "{tool} (apt-get install -y util-linux dmsetup e2fsprogs mount)"
                ));
            }
        }
        if !Path::new("/dev/loop-control").exists() {
            missing.push("loop devices (/dev/loop-control)".to_string());
        }
        if !missing.is_empty() {
            return missing;
        }
        // The kernel's driver registers itself in /proc/misc (dmsetup creates the
        // /dev/mapper/control node even when there is none behind it).
        let device_mapper = || {
            std::fs::read_to_string("/proc/misc")
                .is_ok_and(|m| m.lines().any(|l| l.ends_with(" device-mapper")))
        };
        if !device_mapper() || !delay_target() {
            // Loaded on demand where the kernel has them as modules.
            let _ = run("modprobe", &["dm_delay"]);
        }
        if !device_mapper() {
            missing.push(
                "device-mapper in the kernel (no device-mapper in /proc/misc; modprobe dm_mod)"
                    .to_string(),
            );
        } else if !delay_target() {
            missing.push("the device-mapper delay target (modprobe dm_delay)".to_string());
        }
        missing
    }

    /// The device, removed (unmounted, device-mapper device and loop device removed,
    /// backing file deleted) when dropped, whatever state the test left it in.
    pub struct DelayDevice {
        backing: PathBuf,
        loop_dev: Option<String>,
        name: Option<String>,
        mounted: Option<PathBuf>,
        sectors: u64,
    }

    /// Bytes of the device.
    const SIZE: u64 = 256 << 20;

    impl DelayDevice {
        /// Creates it and mounts it at `mount` (created).
        pub fn create(mount: &Path) -> Result<DelayDevice, String> {
            let backing = mount.with_extension("img");
            std::fs::File::create(&backing)
                .and_then(|f| f.set_len(SIZE))
                .map_err(|e| format!("{}: {e}", backing.display()))?;
            let mut d = DelayDevice {
                backing: backing.clone(),
                loop_dev: None,
                name: None,
                mounted: None,
                sectors: SIZE / 512,
            };
            let loop_dev = run("losetup", &["-f", "--show", &backing.to_string_lossy()])?;
            d.loop_dev = Some(loop_dev.clone());
            let name = format!("coracle-stall-{}", std::process::id());
            run(
                "dmsetup",
                &["create", &name, "--table", &d.table(&loop_dev, 0)],
            )?;
            d.name = Some(name.clone());
            let dev = format!("/dev/mapper/{name}");
            run("mkfs.ext4", &["-q", "-F", &dev])?;
            std::fs::create_dir_all(mount).map_err(|e| e.to_string())?;
            run("mount", &[&dev, &mount.to_string_lossy()])?;
            d.mounted = Some(mount.to_path_buf());
            Ok(d)
        }

        fn table(&self, loop_dev: &str, delay_ms: u64) -> String {
            format!("0 {} delay {loop_dev} 0 {delay_ms}", self.sectors)
        }

        /// Where its file system is mounted.
        pub fn mount(&self) -> &Path {
            self.mounted.as_deref().unwrap_or(Path::new("/nonexistent"))
        }

        /// Every read and write of the device from now on waits `delay_ms` (0: none).
        /// A new table, swapped in: suspend (without freezing the file system), load,
        /// resume.
        pub fn set_delay_ms(&self, delay_ms: u64) -> Result<(), String> {
            let (Some(name), Some(loop_dev)) = (&self.name, &self.loop_dev) else {
                return Err("no device".into());
            };
            run("dmsetup", &["suspend", "--nolockfs", name])?;
            let loaded = run(
                "dmsetup",
                &["reload", name, "--table", &self.table(loop_dev, delay_ms)],
            );
            run("dmsetup", &["resume", name])?;
            loaded.map(|_| ())
        }
    }

    impl Drop for DelayDevice {
        fn drop(&mut self) {
            let _ = self.set_delay_ms(0);
            if let Some(mount) = self.mounted.take() {
                let m = mount.to_string_lossy().to_string();
                if run("umount", &[&m]).is_err() {
                    let _ = run("umount", &["-l", &m]);
                }
            }
            if let Some(name) = self.name.take() {
                let _ = run("dmsetup", &["remove", "--retry", &name]);
            }
            if let Some(loop_dev) = self.loop_dev.take() {
                let _ = run("losetup", &["-d", &loop_dev]);
            }
            let _ = std::fs::remove_file(&self.backing);
        }
    }
}
