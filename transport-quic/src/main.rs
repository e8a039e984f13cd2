//! The `coracle` command: certificates, nodes, the KV client and cluster administration.
//!
//! ```text
//! coracle certs init --dir certs
//! coracle certs issue node 1 --dir certs
//! coracle certs issue client alice --dir certs [--admin]
//! coracle node --config node.toml
//! coracle kv --name alice put greeting hello
//! coracle kv --name alice get greeting
//! coracle admin --name ops status
//! coracle demo                      # a 3-node cluster as processes: live view or script
//! coracle bench --clients 64        # throughput and latency percentiles
//! ```

/// mimalloc rather than the system allocator: see its entry in Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod demo;

use clap::{Args, Parser, Subcommand, ValueEnum};
use coracle_quic::certs::{Ca, Identity};
use coracle_quic::client::Client;
use coracle_quic::config::NodeConfig;
use coracle_quic::protocol::{AdminOp, Consistency, Request, Response};
use coracle_quic::server::RunningNode;
use coracle_quic::tls::Credentials;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "coracle",
    version,
    about = "Coracle: Raft over QUIC with mutual TLS"
)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `coracle_quic=debug,quinn=warn` (or RUST_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the cluster CA and issue certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a node.
    Node {
        /// The node's configuration (see examples/node.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Shut down when standard input closes (used by `coracle demo` for its children).
        #[arg(long, hide = true)]
        watch_stdin: bool,
    },
    /// Use the replicated key-value store.
    Kv {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Inspect and change the cluster (admin certificate needed to change it).
    Admin {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// A 3-node cluster as local processes: a live view in a terminal, or (with --script or
    /// without a terminal) the classic failure scenarios with measured times.
    Demo(demo::DemoArgs),
    /// Measure throughput and latency percentiles against a cluster (one it starts, or
    /// one given with --nodes).
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a new cluster CA: DIR/ca.pem and DIR/ca.key.
    Init {
        /// Where to write the files.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A name for the CA (shown in its subject).
        #[arg(long, default_value = "cluster")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by DIR/ca.pem: `node ID` or `client NAME [--admin]`.
    Issue {
        /// What to issue.
        kind: IssueKind,
        /// The node id or the client name.
        who: String,
        /// The client may run admin operations.
        #[arg(long)]
        admin: bool,
        /// The directory holding ca.pem/ca.key, where the new files go.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum IssueKind {
    /// A node certificate (carries the node id).
    Node,
    /// A client certificate.
    Client,
}

#[derive(Args)]
struct ClientArgs {
    /// Node addresses (any one will do: the client follows the leader).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        env = "CORACLE_NODES",
        default_value = "127.0.0.1:7001"
    )]
    nodes: Vec<SocketAddr>,
    /// Directory of the certificates (ca.pem, client-NAME.pem/.key or admin-NAME.pem/.key).
    #[arg(long, global = true, env = "CORACLE_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// Client name: uses admin-NAME.* if it exists, else client-NAME.*.
    #[arg(long, global = true, env = "CORACLE_NAME", default_value = "admin")]
    name: String,
    /// Give up after this many milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    /// ReadIndex: linearizable, whatever the clocks do.
    Linearizable,
    /// Leader lease: linearizable if clock drift is bounded.
    Lease,
    /// Any node's local state: may be stale.
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Lease => Consistency::Lease,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }
}

#[derive(Subcommand)]
enum KvCommand {
    /// Set KEY to VALUE (prints `ok`, or the previous value with --previous).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Ask for the value KEY had and print it (`previous: …`); the node then copies it
        /// and sends it back, which a plain put does not pay for.
        #[arg(long)]
        previous: bool,
    },
    /// Print the value of KEY.
    Get {
        /// The key.
        key: String,
        /// How fresh the read must be.
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
    },
    /// Delete KEY (prints `ok`, or the value it had with --previous).
    Del {
        /// The key.
        key: String,
        /// Ask for the value KEY had and print it (`deleted: …`).
        #[arg(long)]
        previous: bool,
    },
    /// Compare-and-set: set KEY to --new (or delete it with no --new) if it holds
    /// --expected (or is absent with no --expected).
    Cas {
        /// The key.
        key: String,
        /// The value it must hold now (absent if not given).
        #[arg(long)]
        expected: Option<String>,
        /// The value it gets (deleted if not given).
        #[arg(long)]
        new: Option<String>,
    },
    /// List the keys starting with PREFIX.
    List {
        /// The prefix (all keys if not given).
        #[arg(default_value = "")]
        prefix: String,
        /// Most pairs to print.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// How fresh the listing must be.
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// The status of every node given with --nodes.
    Status,
    /// Add node ID, listening at ADDR, as a learner.
    AddLearner {
        /// Its id.
        id: u64,
        /// Its address (ip:port).
        addr: String,
    },
    /// Make learner ID a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Remove node ID.
    Remove {
        /// Its id.
        id: u64,
    },
    /// Hand leadership to node ID.
    Transfer {
        /// Its id.
        id: u64,
    },
    /// Fault injection: cut each node given with --nodes off from PEERS (Raft messages to
    /// and from them are dropped; clients still reach it).
    Isolate {
        /// The peers' ids, comma-separated.
        #[arg(value_delimiter = ',', required = true)]
        peers: Vec<u64>,
    },
    /// Undo `isolate` on every node given with --nodes.
    Heal,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    match run(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("coracle: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::prelude::*;
    let spec = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let targets: tracing_subscriber::filter::Targets = spec.parse().unwrap_or_else(|_| {
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
    });
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(targets),
        )
        .try_init();
}

type Error = Box<dyn std::error::Error>;

/// Runs a command; `Ok(false)` when it ran but an outcome was not the expected one.
fn run(command: Command) -> Result<bool, Error> {
    match command {
        Command::Certs { command } => certs(command),
        Command::Node {
            config,
            watch_stdin,
        } => node(config, watch_stdin),
        Command::Kv { conn, command } => smol::block_on(kv(conn, command)),
        Command::Admin { conn, command } => smol::block_on(admin(conn, command)),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
    }
    .map(|()| true)
    .or_else(|e| match e.downcast::<Unexpected>() {
        Ok(_) => Ok(false),
        Err(e) => Err(e),
    })
}

/// A command ran to its end but an outcome was not the expected one (already reported).
#[derive(Debug)]
struct Unexpected;

impl std::fmt::Display for Unexpected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an outcome was not the expected one")
    }
}

impl std::error::Error for Unexpected {}

fn certs(command: CertsCommand) -> Result<(), Error> {
    match command {
        CertsCommand::Init { dir, name, days } => {
            let ca = Ca::generate(&name, days)?;
            let (cert, key) = ca.write(&dir)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertsCommand::Issue {
            kind,
            who,
            admin,
            dir,
            days,
        } => {
            let ca = Ca::load(&dir.join("ca.pem"), &dir.join("ca.key"))?;
            let identity = match kind {
                IssueKind::Node => Identity::Node(
                    who.parse()
                        .map_err(|_| format!("node id {who:?} is not a number"))?,
                ),
                IssueKind::Client => Identity::Client { name: who, admin },
            };
            let issued = ca.issue(&identity, days)?;
            let (cert, key) = issued.write(&dir, &identity.file_stem())?;
            println!(
                "wrote {} and {} for {identity}",
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}

fn node(config: PathBuf, watch_stdin: bool) -> Result<(), Error> {
    use smol::stream::StreamExt;
    let cfg = NodeConfig::load(&config)?;
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term])?;
    let mut node = RunningNode::start(&cfg)?;
    let (stdin_closed, stdin_watch) = smol::channel::bounded::<()>(1);
    if watch_stdin {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = stdin_closed.try_send(());
        });
    }
    // Waits with a plain parker (the executor thread drives the reactor; see server.rs).
    let stopped_by_signal = smol::future::block_on(async {
        let signal = async {
            smol::future::or(
                async {
                    signals.next().await;
                },
                async {
                    // Never resolves unless the watcher above reports the end of stdin.
                    let _ = stdin_watch.recv().await;
                    if !watch_stdin {
                        smol::future::pending::<()>().await;
                    }
                },
            )
            .await;
            true
        };
        let finished = async {
            while !node.is_finished() {
                smol::Timer::after(Duration::from_millis(100)).await;
            }
            false
        };
        smol::future::or(signal, finished).await
    });
    if stopped_by_signal {
        tracing::info!(node = cfg.id, "signal received; shutting down");
        node.shutdown()?;
    } else {
        node.join()?;
    }
    Ok(())
}

fn client(conn: &ClientArgs) -> Result<Client, Error> {
    let ca = conn.certs.join("ca.pem");
    let admin = conn.certs.join(format!("admin-{}.pem", conn.name));
    let stem = if admin.exists() {
        format!("admin-{}", conn.name)
    } else {
        format!("client-{}", conn.name)
    };
    let creds = Credentials::load(
        &ca,
        &conn.certs.join(format!("{stem}.pem")),
        &conn.certs.join(format!("{stem}.key")),
    )?;
    Ok(Client::new(&creds, conn.nodes.clone())?
        .with_timeout(Duration::from_millis(conn.timeout_ms)))
}

fn show(v: Option<Vec<u8>>) -> String {
    match v {
        Some(v) => String::from_utf8_lossy(&v).into_owned(),
        None => "(none)".into(),
    }
}

async fn kv(conn: ClientArgs, command: KvCommand) -> Result<(), Error> {
    let client = client(&conn)?;
    match command {
        KvCommand::Put {
            key,
            value,
            previous: true,
        } => println!(
            "previous: {}",
            show(client.put_returning_previous(key, value).await?)
        ),
        KvCommand::Put {
            key,
            value,
            previous: false,
        } => {
            client.put(key, value).await?;
            println!("ok");
        }
        KvCommand::Get { key, consistency } => {
            match client.get_with(key, consistency.into()).await? {
                Some(v) => println!("{}", String::from_utf8_lossy(&v)),
                None => {
                    client.close();
                    return Err("not found".into());
                }
            }
        }
        KvCommand::Del {
            key,
            previous: true,
        } => println!(
            "deleted: {}",
            show(client.delete_returning_previous(key).await?)
        ),
        KvCommand::Del {
            key,
            previous: false,
        } => {
            client.delete(key).await?;
            println!("ok");
        }
        KvCommand::Cas { key, expected, new } => {
            let (swapped, current) = client.cas(key, expected, new).await?;
            if swapped {
                println!("swapped (was {})", show(current));
            } else {
                client.close();
                return Err(format!("not swapped: the value is {}", show(current)).into());
            }
        }
        KvCommand::List {
            prefix,
            limit,
            consistency,
        } => {
            for (k, v) in client.list(prefix, limit, consistency.into()).await? {
                println!(
                    "{}\t{}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                );
            }
        }
    }
    client.close();
    Ok(())
}

async fn admin(conn: ClientArgs, command: AdminCommand) -> Result<(), Error> {
    let client = client(&conn)?;
    let op = match command {
        AdminCommand::Status => {
            println!(
                "{:>4} {:>12} {:>6} {:>6} {:>8} {:>8} {:>8}  members",
                "node", "role", "term", "leader", "commit", "applied", "last"
            );
            // All at once: a node that is down or paused holds up only its own line.
            for status in client.statuses(&conn.nodes).await {
                match status {
                    Ok(s) => {
                        let members: Vec<String> = s
                            .members
                            .iter()
                            .map(|m| {
                                format!(
                                    "{}{}{}",
                                    m.id,
                                    if m.voter { "" } else { "(learner)" },
                                    if m.connected { "" } else { "(down)" }
                                )
                            })
                            .collect();
                        println!(
                            "{:>4} {:>12} {:>6} {:>6} {:>8} {:>8} {:>8}  {}",
                            s.id,
                            s.role,
                            s.term,
                            s.leader.map_or("-".into(), |l| l.to_string()),
                            s.commit,
                            s.applied,
                            s.last_index,
                            members.join(" ")
                        )
                    }
                    // The error names the node.
                    Err(e) => println!("unreachable: {e}"),
                }
            }
            client.close();
            return Ok(());
        }
        AdminCommand::AddLearner { id, addr } => AdminOp::AddLearner { id, addr },
        AdminCommand::Promote { id } => AdminOp::Promote { id },
        AdminCommand::Remove { id } => AdminOp::Remove { id },
        AdminCommand::Transfer { id } => AdminOp::Transfer { id },
        AdminCommand::Isolate { peers } => return isolate(&client, &conn.nodes, peers).await,
        AdminCommand::Heal => return isolate(&client, &conn.nodes, Vec::new()).await,
    };
    client.admin(op).await?;
    println!("done");
    client.close();
    Ok(())
}

/// Sends the fault-injection order to each node at `nodes` (not redirected).
async fn isolate(client: &Client, nodes: &[SocketAddr], peers: Vec<u64>) -> Result<(), Error> {
    let request = Request::Admin(AdminOp::Isolate {
        peers: peers.clone(),
    });
    let mut failures = 0;
    for &addr in nodes {
        match client.attempt(addr, &request).await {
            Ok(Response::Done) if peers.is_empty() => println!("{addr}: healed"),
            Ok(Response::Done) => println!("{addr}: isolated from {peers:?}"),
            Ok(Response::Error { kind, message }) => {
                failures += 1;
                println!("{addr}: {kind:?}: {message}")
            }
            Ok(other) => {
                failures += 1;
                println!("{addr}: unexpected answer {other:?}")
            }
            Err(e) => {
                failures += 1;
                println!("{e}") // it names the node
            }
        }
    }
    client.close();
    if failures > 0 {
        return Err(format!("{failures} node(s) did not take the order").into());
    }
    Ok(())
}
