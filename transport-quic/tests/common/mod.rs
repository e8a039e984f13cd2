//! Shared helpers of the loopback tests: a temporary directory with a CA, certificates and
//! node configurations on free 127.0.0.1 ports.
#![allow(dead_code, clippy::unwrap_used)] // test support code: panics are the failure report

pub mod scrape;

use coracle_quic::certs::{Ca, Identity};
use coracle_quic::client::Client;
use coracle_quic::config::NodeConfig;
use coracle_quic::protocol::{Request, WriteOp};
use coracle_quic::tls::Credentials;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "coracle-quic-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Free UDP ports on 127.0.0.1 (bound then released: a small race, fine on loopback).
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<_> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// A cluster's files: CA, node and client certificates, configurations.
pub struct Setup {
    pub dir: TempDir,
    pub ca: Ca,
    pub addrs: Vec<SocketAddr>,
}

impl Setup {
    pub fn new(tag: &str, nodes: usize) -> Setup {
        let dir = TempDir::new(tag);
        let certs = dir.0.join("certs");
        let ca = Ca::generate("test", 2).unwrap();
        ca.write(&certs).unwrap();
        for id in 1..=nodes as u64 {
            let identity = Identity::Node(id);
            ca.issue(&identity, 2)
                .unwrap()
                .write(&certs, &identity.file_stem())
                .unwrap();
        }
        for (name, admin) in [("alice", false), ("ops", true)] {
            let identity = Identity::Client {
                name: name.into(),
                admin,
            };
            ca.issue(&identity, 2)
                .unwrap()
                .write(&certs, &identity.file_stem())
                .unwrap();
        }
        Setup {
            addrs: free_addrs(nodes),
            dir,
            ca,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir.0
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.0.join("certs")
    }

    /// The configuration text of node `id` (1-based), short timeouts for tests.
    pub fn config_text(&self, id: u64) -> String {
        let mut s = format!(
            "id = {id}\ncluster_id = 7\nlisten = \"{}\"\ndata_dir = \"data/node-{id}\"\n",
            self.addrs[id as usize - 1]
        );
        for (i, a) in self.addrs.iter().enumerate() {
            s += &format!("[[peers]]\nid = {}\naddr = \"{a}\"\n", i + 1);
        }
        s += &format!(
            "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n"
        );
        s += "[raft]\nelection_timeout_ms = 200\nheartbeat_ms = 30\n";
        s += "[transport]\nkeep_alive_ms = 200\nidle_timeout_ms = 1000\nreconnect_max_ms = 300\n";
        s
    }

    pub fn write_config(&self, id: u64) -> PathBuf {
        let path = self.dir.0.join(format!("node-{id}.toml"));
        std::fs::write(&path, self.config_text(id)).unwrap();
        path
    }

    pub fn config(&self, id: u64) -> NodeConfig {
        NodeConfig::parse(&self.config_text(id), self.path()).unwrap()
    }

    pub fn creds(&self, stem: &str) -> Credentials {
        let c = self.certs();
        Credentials::load(
            &c.join("ca.pem"),
            &c.join(format!("{stem}.pem")),
            &c.join(format!("{stem}.key")),
        )
        .unwrap()
    }

    pub fn client(&self, stem: &str) -> Client {
        Client::new(&self.creds(stem), self.addrs.clone())
            .unwrap()
            .with_timeout(Duration::from_secs(20))
            .with_attempt_timeout(Duration::from_secs(1))
    }
}

/// A put of `value` at `key` as write `seq` of session `client`, asking for the value it
/// replaces; `ack_below` 1, so the state machine keeps every outcome of the session (a
/// retry of any of them is answered with it).
pub fn session_put(client: u64, seq: u64, key: &str, value: &str) -> Request {
    Request::Write {
        client,
        seq,
        ack_below: 1,
        op: WriteOp::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            return_previous: true,
        },
    }
}

/// Polls `f` until it returns `Some` or `limit` passes (liveness bound, not a timing
/// assertion).
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node at `addrs` that says it leads, if any (all asked at once, through `client`).
pub fn leader(client: &Client, addrs: &[SocketAddr]) -> Option<u64> {
    smol::block_on(client.statuses(addrs))
        .into_iter()
        .flatten()
        .filter(|s| s.role == "Leader")
        .map(|s| s.id)
        .last()
}

// ----- node processes ------------------------------------------------------------------

pub const BIN: &str = env!("CARGO_BIN_EXE_coracle");

/// A node process, killed (SIGKILL) when dropped. Only the child it holds is ever killed.
/// A figure of process `pid`'s memory from `/proc/PID/status` (`field`: `VmRSS`, the
/// resident memory now; `VmHWM`, its peak so far), in bytes.
pub fn proc_memory(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

pub struct Proc(pub Option<std::process::Child>);

impl Proc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.0.as_mut()?;
        let status = wait_for(limit, || child.try_wait().unwrap())?;
        self.0 = None;
        Some(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn node_log(setup: &Setup, id: u64) -> PathBuf {
    setup.path().join(format!("node-{id}.log"))
}

/// Starts `coracle node` with the configuration in `config`, its log appended to the
/// node's log file. Its standard input is a pipe held by the returned `Proc`
/// (`--watch-stdin`): if this test process dies without dropping it (an abort), the node
/// stops instead of running on as an orphan.
pub fn spawn_with(setup: &Setup, id: u64, config: &Path) -> Proc {
    spawn_customised(setup, id, config, |c| c)
}

/// [`spawn_with`], with `args` after `--config CONFIG` (`--join ...`, `--force-new-cluster`).
pub fn spawn_with_args<S: AsRef<std::ffi::OsStr>>(
    setup: &Setup,
    id: u64,
    config: &Path,
    args: impl IntoIterator<Item = S>,
) -> Proc {
    spawn_node_command(setup, id, config, |c| c, args)
}

/// [`spawn_with`], the command first changed by `customise` (environment, more flags).
pub fn spawn_customised(
    setup: &Setup,
    id: u64,
    config: &Path,
    customise: impl FnOnce(&mut std::process::Command) -> &mut std::process::Command,
) -> Proc {
    spawn_node_command(setup, id, config, customise, std::iter::empty::<&str>())
}

/// `coracle node --config CONFIG ARGS...`, the command first changed by `customise`, its
/// standard error appended to the node's log, stopped when its standard input closes.
fn spawn_node_command<S: AsRef<std::ffi::OsStr>>(
    setup: &Setup,
    id: u64,
    config: &Path,
    customise: impl FnOnce(&mut std::process::Command) -> &mut std::process::Command,
    args: impl IntoIterator<Item = S>,
) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node_log(setup, id))
        .unwrap();
    let mut command = std::process::Command::new(BIN);
    let child = customise(&mut command)
        .args(["node", "--log", "info", "--watch-stdin", "--config"])
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(Some(child))
}

/// `coracle admin` with the admin certificate against nodes `ids` (1-based), to be given
/// its subcommand.
pub fn admin_command(setup: &Setup, ids: &[u64]) -> std::process::Command {
    let nodes: Vec<String> = ids
        .iter()
        .map(|&id| setup.addrs[id as usize - 1].to_string())
        .collect();
    let mut command = std::process::Command::new(BIN);
    command
        .args([
            "admin",
            "--nodes",
            &nodes.join(","),
            "--name",
            "ops",
            "--certs",
        ])
        .arg(setup.certs());
    command
}

/// Starts node `i + 1` with the configuration `configs[i]`, for each.
pub fn spawn_all(setup: &Setup, configs: &[PathBuf]) -> Vec<Proc> {
    (1..)
        .zip(configs)
        .map(|(id, config)| spawn_with(setup, id, config))
        .collect()
}

pub fn spawn_node(setup: &Setup, id: u64) -> Proc {
    let config = setup.write_config(id);
    spawn_with(setup, id, &config)
}

/// The common first act of the process tests: wait for a leader, write `k0..k{n}`, kill the
/// leader (SIGKILL), write `k{n}..k{2n}` under the new leader (the client follows it), and
/// read all `2n` back linearizably. Returns the first and the second leader.
pub fn writes_survive_a_leader_kill(
    setup: &Setup,
    procs: &mut [Proc],
    client: &Client,
    n: usize,
) -> (u64, u64) {
    let first = wait_for(Duration::from_secs(20), || leader(client, &setup.addrs))
        .expect("a leader within 20 s");
    smol::block_on(async {
        for i in 0..n {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    procs[first as usize - 1].kill();
    smol::block_on(async {
        for i in n..2 * n {
            client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        }
    });
    let second = wait_for(Duration::from_secs(20), || {
        leader(client, &setup.addrs).filter(|&l| l != first)
    })
    .expect("a new leader");
    assert_ne!(first, second);
    // Every acknowledged write is there, read linearizably.
    smol::block_on(async {
        for i in 0..2 * n {
            let v = client.get(format!("k{i}")).await.unwrap();
            assert_eq!(v, Some(format!("v{i}").into_bytes()), "k{i}");
        }
    });
    (first, second)
}

/// Reads `k{range}` linearizably through `client`, each expected to be `v{i}`.
pub fn read_back(client: &Client, range: std::ops::Range<usize>) {
    smol::block_on(async {
        for i in range {
            let v = client
                .get_with(
                    format!("k{i}"),
                    coracle_quic::protocol::Consistency::Linearizable,
                )
                .await
                .unwrap();
            assert_eq!(v, Some(format!("v{i}").into_bytes()), "k{i}");
        }
    });
}

/// Runs the futures concurrently (on this thread) and returns their outputs in order.
pub async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let tasks: Vec<_> = futures.map(|f| Box::pin(f)).collect();
    let mut slots: Vec<Option<F::Output>> = tasks.iter().map(|_| None).collect();
    let mut tasks: Vec<_> = tasks.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (task, slot) in tasks.iter_mut().zip(slots.iter_mut()) {
            if let Some(t) = task {
                match t.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *slot = Some(v);
                        *task = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    slots.into_iter().map(|s| s.unwrap()).collect()
}
