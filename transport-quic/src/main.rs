//! The `coracle` command: certificates, nodes, the KV client and cluster administration.
//!
//! ```text
//! coracle certs init --dir certs
//! coracle certs issue node 1 --dir certs
//! coracle certs issue client alice --dir certs [--admin]
//! coracle node --config node.toml
//! coracle kv --name alice put greeting hello
//! coracle kv --name alice get greeting
//! coracle node --config node.toml --join 127.0.0.1:7001,127.0.0.1:7002
//! coracle admin --name ops status [--watch [--interval MS]]
//! coracle admin --nodes 127.0.0.1:7002 leave
//! coracle admin change --add 4=127.0.0.1:7004 --add 5=127.0.0.1:7005 --remove 2
//! coracle admin priority 3 10
//! coracle demo                      # a 3-node cluster as processes: live view or script
//! coracle bench --clients 64        # throughput and latency percentiles
//! ```

/// mimalloc rather than the system allocator: see its entry in Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod demo;
mod status;

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
    /// Log filter, e.g. `info`, `debug`, `coracle_quic=debug,quinn=warn` (or RUST_LOG):
    /// comma-separated `LEVEL` or `TARGET=LEVEL`, levels off, error, warn, info, debug,
    /// trace. Logs are coloured only when standard error is a terminal (and NO_COLOR is
    /// unset).
    #[arg(long, global = true)]
    log: Option<String>,
    /// How log lines are written: `text` for people, `json` for log collectors (one JSON
    /// object a line: timestamp, level, fields with the message, target).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The `--log-format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Lines for people (coloured on a terminal).
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create the cluster CA and issue certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a node (or, with `restore`, seed a new node's data directory from a backup).
    #[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
    Node {
        #[command(subcommand)]
        action: Option<NodeAction>,
        /// The node's configuration (see examples/node.toml).
        #[arg(long, short, required = true)]
        config: Option<PathBuf>,
        /// Shut down when standard input closes (used by `coracle demo` for its children).
        #[arg(long, hide = true)]
        watch_stdin: bool,
        /// DANGER: the majority of the cluster is lost for good. Restart this survivor as
        /// a new cluster of one from its own data (its node.toml must name a NEW
        /// cluster_id), then grow it with `admin add-learner` and `promote`. Refused while
        /// a quorum of the old cluster answers, unless given twice. README: "Recovery
        /// after losing a quorum".
        #[arg(long, action = clap::ArgAction::Count)]
        force_new_cluster: u8,
        /// Join a running cluster through the members at these addresses (any one will do;
        /// comma-separated or repeated): the node asks to be added as a learner at its own
        /// address and, with `[membership] auto_promote`, to be made a voter once caught up.
        /// A node that is a member already (a restart) does not join again.
        #[arg(long, value_delimiter = ',', num_args = 1.., value_parser = node_addr, conflicts_with = "force_new_cluster")]
        join: Vec<SocketAddr>,
        /// How long the join may take before the node gives up and stops (ms, 1 ms to a
        /// day).
        #[arg(long, requires = "join", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
        join_timeout_ms: u64,
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
enum NodeAction {
    /// Seed the (missing or empty) data directory of a node of a NEW cluster from a backup
    /// (`admin snapshot save`). The node.toml gives the new cluster: its cluster_id must
    /// differ from the backup's; run this for every node of the new cluster, then start
    /// them.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The new node's configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Save a consistent backup of the cluster's store into FILE (checksummed, with its
    /// index, term, configuration and cluster id).
    Save {
        /// Where to write it (replaced atomically if it exists).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a new cluster CA: DIR/ca.pem and DIR/ca.key.
    Init {
        /// Where to write the files.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A name for the CA (shown in its subject; 1 to 53 characters).
        #[arg(long, default_value = "cluster")]
        name: String,
        /// Validity in days (at least 1; the certificate cannot end after 9999-12-31).
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by DIR/ca.pem: `node ID` or `client NAME [--admin]`.
    Issue {
        /// What to issue.
        kind: IssueKind,
        /// The node id (1 or more) or the client name (letters, digits, `-`, `_`).
        who: String,
        /// The client may run admin operations (client certificates only).
        #[arg(long)]
        admin: bool,
        /// The directory holding ca.pem/ca.key, where the new files go.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Validity in days (at least 1; it ends with the CA's validity at the latest).
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
        default_value = "127.0.0.1:7001",
        value_parser = node_addr,
    )]
    nodes: Vec<SocketAddr>,
    /// Directory of the certificates (ca.pem, client-NAME.pem/.key or admin-NAME.pem/.key).
    #[arg(long, global = true, env = "CORACLE_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// Client name: uses admin-NAME.* if it exists, else client-NAME.*.
    #[arg(long, global = true, env = "CORACLE_NAME", default_value = "admin")]
    name: String,
    /// Give up after this many milliseconds (1 ms to a day).
    #[arg(long, global = true, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
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
        /// Most pairs to print (at least 1).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// How fresh the listing must be.
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// The status of every node given with --nodes (refreshed with --watch).
    Status {
        /// Redraw the table until Ctrl-C: in place on a terminal, else one table after the
        /// other, each headed by its time.
        #[arg(long)]
        watch: bool,
        /// Milliseconds between two tables with --watch (100 ms to an hour).
        #[arg(long, requires = "watch", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
        interval: u64,
    },
    /// Add node ID, listening at ADDR, as a learner.
    AddLearner {
        /// Its id.
        #[arg(value_parser = node_id)]
        id: u64,
        /// Its address (ip:port), as the other nodes reach it.
        #[arg(value_parser = node_addr)]
        addr: SocketAddr,
    },
    /// Make learner ID a voter.
    Promote {
        /// Its id.
        #[arg(value_parser = node_id)]
        id: u64,
    },
    /// Remove node ID.
    Remove {
        /// Its id.
        #[arg(value_parser = node_id)]
        id: u64,
    },
    /// The node at --nodes (one address) leaves the cluster and stops: a leader hands
    /// leadership over first, then the leader removes it.
    Leave,
    /// Change several members at once through joint consensus: new nodes are added as
    /// learners and caught up first, then one joint change makes every --add a voter and
    /// removes every --remove.
    Change {
        /// A node to make a voter, as ID=ADDR (ip:port where it listens); repeatable.
        #[arg(long, value_parser = member_at)]
        add: Vec<(u64, SocketAddr)>,
        /// A node to remove, by id; repeatable.
        #[arg(long, value_parser = node_id)]
        remove: Vec<u64>,
    },
    /// Set the election priority of node ID (0 to 255) on every node: a caught-up voter of
    /// higher priority is handed leadership. Lasts until that node restarts (it then
    /// announces its node.toml `priority`).
    Priority {
        /// Its id.
        #[arg(value_parser = node_id)]
        id: u64,
        /// Its priority.
        priority: u8,
    },
    /// Hand leadership to node ID.
    Transfer {
        /// Its id.
        #[arg(value_parser = node_id)]
        id: u64,
    },
    /// Fault injection: cut each node given with --nodes off from PEERS (Raft messages to
    /// and from them are dropped; clients still reach it).
    Isolate {
        /// The peers' ids, comma-separated.
        #[arg(value_delimiter = ',', required = true, value_parser = node_id)]
        peers: Vec<u64>,
    },
    /// Undo `isolate` on every node given with --nodes.
    Heal,
    /// Backups: `snapshot save FILE`.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

/// The longest `--timeout-ms`: a day (a longer wait is a typo, not a plan).
const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Parses a node id given on the command line: a number of 1 or more.
pub(crate) fn node_id(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("node ids start at 1".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!(
            "not a node id (a whole number from 1 to {})",
            u64::MAX
        )),
    }
}

/// Parses `ID=ADDR` (a member and where it listens) given on the command line.
pub(crate) fn member_at(s: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=ADDR (e.g. 4=127.0.0.1:7004)"))?;
    Ok((node_id(id)?, node_addr(addr)?))
}

/// Parses a node's address given on the command line (`ip:port`, one a node can listen
/// on and be reached at).
pub(crate) fn node_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = s
        .parse::<SocketAddr>()
        .map_err(|_| "not an ip:port address (e.g. 127.0.0.1:7001 or [::1]:7001)".to_string())?;
    coracle_quic::config::check_node_addr(addr)?;
    Ok(addr)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log.as_deref(), cli.log_format) {
        eprintln!("coracle: {e}");
        return ExitCode::from(2);
    }
    match run(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("coracle: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up the logs on standard error: the filter of `--log`, else of `RUST_LOG`, else
/// `info`; a filter that is not one is an error (never silently another filter). Colours
/// only on a terminal, so log files hold plain text. `--log-format json` writes one JSON
/// object a line instead, never coloured.
fn init_logging(flag: Option<&str>, format: LogFormat) -> Result<(), String> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let (spec, source) = match (flag, std::env::var("RUST_LOG")) {
        (Some(f), _) => (f.to_string(), "--log"),
        (None, Ok(env)) => (env, "RUST_LOG"),
        (None, Err(_)) => ("info".to_string(), "the default"),
    };
    let targets = log_filter(&spec).map_err(|e| format!("{source} {spec:?}: {e}"))?;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_ansi(colour).with_filter(targets))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                layer
                    .json()
                    .with_ansi(false)
                    .with_current_span(false)
                    .with_filter(targets),
            )
            .try_init(),
    };
    Ok(())
}

/// Parses a log filter: comma-separated `LEVEL` or `TARGET=LEVEL`. tracing's own parser
/// takes a bare word that is no level (a typo such as `infoo`) as a target to log at every
/// level, so that everything else goes silent: refused here.
fn log_filter(spec: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    const LEVELS: &str = "off, error, warn, info, debug, trace";
    if spec.trim().is_empty() {
        return Err(format!("an empty log filter; give a level ({LEVELS})"));
    }
    for directive in spec.split(',') {
        let directive = directive.trim();
        if directive.is_empty() {
            return Err("an empty directive between commas".into());
        }
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => (Some(target), level),
            None => (None, directive),
        };
        if target.is_some_and(|t| t.is_empty()) {
            return Err(format!("{directive:?} names no target before '='"));
        }
        if level
            .parse::<tracing::level_filters::LevelFilter>()
            .is_err()
        {
            return Err(format!(
                "{level:?} is not a level ({LEVELS}); a directive is LEVEL or TARGET=LEVEL"
            ));
        }
    }
    spec.parse().map_err(|e| format!("{e}"))
}

type Error = Box<dyn std::error::Error>;

/// Runs a command; `Ok(false)` when it ran but an outcome was not the expected one.
fn run(command: Command) -> Result<bool, Error> {
    match command {
        Command::Certs { command } => certs(command),
        Command::Node {
            action: Some(NodeAction::Restore { file, config }),
            ..
        } => restore(&file, &config),
        Command::Node {
            action: None,
            config,
            watch_stdin,
            force_new_cluster,
            join,
            join_timeout_ms,
        } => match config {
            Some(config) => node(
                config,
                watch_stdin,
                force_new_cluster,
                join,
                Duration::from_millis(join_timeout_ms),
            ),
            None => Err("--config is required".into()),
        },
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
            println!(
                "wrote {} and {}, valid until {}",
                cert.display(),
                key.display(),
                coracle_quic::certs::date(ca.not_after())
            );
        }
        CertsCommand::Issue {
            kind,
            who,
            admin,
            dir,
            days,
        } => {
            let ca = Ca::load(&dir.join("ca.pem"), &dir.join("ca.key"))?;
            let identity =
                match kind {
                    IssueKind::Node if admin => return Err(
                        "--admin is for client certificates: a node certificate carries no role"
                            .into(),
                    ),
                    IssueKind::Node => {
                        Identity::Node(node_id(&who).map_err(|e| format!("node id {who:?}: {e}"))?)
                    }
                    IssueKind::Client => Identity::Client { name: who, admin },
                };
            let issued = ca.issue(&identity, days)?;
            let (cert, key) = issued.write(&dir, &identity.file_stem())?;
            let capped = if issued.not_after == ca.not_after() {
                " (the CA's own end: a certificate cannot outlive its CA)"
            } else {
                ""
            };
            println!(
                "wrote {} and {} for {identity}, valid until {}{capped}",
                cert.display(),
                key.display(),
                coracle_quic::certs::date(issued.not_after),
            );
        }
    }
    Ok(())
}

fn node(
    config: PathBuf,
    watch_stdin: bool,
    force_new_cluster: u8,
    join: Vec<SocketAddr>,
    join_timeout: Duration,
) -> Result<(), Error> {
    use smol::stream::StreamExt;
    let mut cfg = NodeConfig::load(&config)?;
    cfg.join = join;
    // The versions a test may make the node claim: a value that is none stops it here.
    coracle_quic::hello::Versions::announced()?;
    if force_new_cluster > 0 {
        recover(&cfg, force_new_cluster > 1)?;
    }
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term])?;
    let mut node = RunningNode::start(&cfg)?;
    if !cfg.join.is_empty() {
        let joining = node.handle().with_timeout(join_timeout);
        match smol::future::block_on(joining.join(&cfg.join)) {
            Ok(by) if by == cfg.id => {}
            Ok(by) => tracing::info!(
                node = cfg.id,
                leader = by,
                "added to the cluster as a learner"
            ),
            Err(e) => {
                let _ = node.shutdown();
                return Err(format!("node {} cannot join: {e}", cfg.id).into());
            }
        }
    }
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
    let mut client = client(&conn)?;
    if matches!(command, AdminCommand::Leave | AdminCommand::Change { .. }) {
        // These take as long as a hand-over or a catch-up: one attempt may use the whole
        // --timeout-ms (a second attempt while the first runs would only collide with it).
        client = client.with_attempt_timeout(Duration::from_millis(conn.timeout_ms));
    }
    let op = match command {
        AdminCommand::Status { watch, interval } => {
            let shown = if watch {
                status::watch(&client, &conn.nodes, Duration::from_millis(interval))
                    .await
                    .map_err(Error::from)
            } else {
                status::once(&client, &conn.nodes)
                    .await
                    .map_err(Error::from)
            };
            client.close();
            return shown;
        }
        AdminCommand::AddLearner { id, addr } => AdminOp::AddLearner {
            id,
            addr: addr.to_string(),
        },
        AdminCommand::Promote { id } => AdminOp::Promote { id },
        AdminCommand::Remove { id } => AdminOp::Remove { id },
        AdminCommand::Transfer { id } => AdminOp::Transfer { id },
        AdminCommand::Isolate { peers } => return isolate(&client, &conn.nodes, peers).await,
        AdminCommand::Heal => return isolate(&client, &conn.nodes, Vec::new()).await,
        AdminCommand::Leave => {
            let left = leave(&client, &conn.nodes).await;
            client.close();
            return left;
        }
        AdminCommand::Change { add, remove } => {
            if add.is_empty() && remove.is_empty() {
                client.close();
                return Err("nothing to change: give --add ID=ADDR and/or --remove ID".into());
            }
            AdminOp::Change {
                add: add.into_iter().map(|(id, a)| (id, a.to_string())).collect(),
                remove,
            }
        }
        AdminCommand::Priority { id, priority } => AdminOp::Priority { id, priority },
        AdminCommand::Snapshot {
            command: SnapshotCommand::Save { file },
        } => {
            let saved = save_backup(&client, &file).await;
            client.close();
            return saved;
        }
    };
    client.admin(op).await?;
    println!("done");
    client.close();
    Ok(())
}

/// Takes a backup from the cluster and writes it to `file`.
async fn save_backup(client: &Client, file: &std::path::Path) -> Result<(), Error> {
    let backup = client.save_backup(file).await?;
    println!(
        "saved {} bytes of state at index {} (term {}) of cluster {} to {}",
        backup.state_len,
        backup.index,
        backup.term,
        backup.cluster,
        file.display()
    );
    Ok(())
}

/// Seeds the data directory of the node `config` from the backup `file`.
fn restore(file: &std::path::Path, config: &std::path::Path) -> Result<(), Error> {
    let cfg = NodeConfig::load(config)?;
    let backup = coracle_quic::backup::restore_kv(file, &cfg)?;
    let members: Vec<String> = backup.members.iter().map(|m| m.id.to_string()).collect();
    println!(
        "restored the state at index {} of cluster {} (members {}) into {} as node {} of \
         cluster {}; start the node with `coracle node --config {}`",
        backup.index,
        backup.cluster,
        members.join(","),
        cfg.data_dir.display(),
        cfg.id,
        cfg.cluster_id,
        config.display()
    );
    Ok(())
}

/// `node --force-new-cluster`: the directory rewritten before the node starts, with loud
/// warnings on stderr and in the log.
fn recover(cfg: &NodeConfig, ignore_live_quorum: bool) -> Result<(), Error> {
    use coracle_quic::recover::{force_new_cluster, ForceOptions};
    let options = ForceOptions {
        ignore_live_quorum,
        ..ForceOptions::default()
    };
    let warning = format!(
        "--force-new-cluster: node {} is being restarted as a NEW cluster {} of one voter from its own \
         data. Writes the lost majority committed that this node never received are LOST; writes never \
         acknowledged may take effect. Never restart a node of the old cluster with its old data again.",
        cfg.id, cfg.cluster_id
    );
    loud(cfg.id, &warning);
    let done = force_new_cluster(cfg, &options)?;
    let n = done.new_cluster;
    let summary = format!(
        "FORCED A NEW CLUSTER: node {} left cluster {} (voters {:?}; answered the probe: {:?}; not \
         asked, no address: {:?}) for cluster {}: its log through index {} is kept and will commit, \
         the configuration of node {} alone is entry {} in term {}. Add members with `coracle admin \
         add-learner ID ADDR`, then `coracle admin promote ID`.",
        cfg.id,
        n.old_cluster,
        done.old_voters,
        done.answered,
        done.unprobed,
        n.cluster,
        n.kept_through,
        cfg.id,
        n.index,
        n.term
    );
    if !done.answered.is_empty() {
        let alive = format!(
            "nodes {:?} of the old cluster {} are still running: stop them for good, they must never \
             meet the new cluster's clients",
            done.answered, n.old_cluster
        );
        loud(cfg.id, &alive);
    }
    loud(cfg.id, &summary);
    Ok(())
}

/// A warning on stderr (where an operator at a terminal sees it whatever the log filter)
/// and in the log.
fn loud(node: u64, warning: &str) {
    eprintln!("WARNING: {warning}");
    tracing::warn!(node, "{warning}");
}

/// Makes the node at `nodes` (exactly one) leave the cluster.
async fn leave(client: &Client, nodes: &[SocketAddr]) -> Result<(), Error> {
    let [addr] = nodes else {
        return Err(format!(
            "leave: give the address of the node that leaves, alone, with --nodes ({} given)",
            nodes.len()
        )
        .into());
    };
    match client
        .attempt(*addr, &Request::Admin(AdminOp::Leave))
        .await?
    {
        Response::Done => {
            println!("{addr}: left the cluster; it is shutting down");
            Ok(())
        }
        Response::Error { kind, message } => Err(format!("{addr}: {kind:?}: {message}").into()),
        other => Err(format!("{addr}: unexpected answer {other:?}").into()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A log filter that is none is an error, never silently another filter: a bare word
    /// that is no level (tracing takes it as a target, which silences everything else).
    #[test]
    fn log_filters_that_are_none_are_refused() {
        for good in [
            "info",
            "debug",
            "off",
            "coracle_quic=debug,quinn=warn",
            "warn, x=trace",
        ] {
            assert!(log_filter(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("infoo", "not a level"),
            ("", "empty"),
            ("  ", "empty"),
            ("info,,debug", "empty directive"),
            ("=info", "no target"),
            ("a=b=c", "not a level"),
            ("coracle_quic=verbose", "not a level"),
        ] {
            let e = log_filter(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn node_ids_and_addresses_on_the_command_line_are_checked() {
        assert_eq!(node_id("7"), Ok(7));
        assert!(node_id("0").unwrap_err().contains("start at 1"));
        for bad in ["", "-1", "x", "18446744073709551616", "1.5"] {
            assert!(node_id(bad).unwrap_err().contains("not a node id"), "{bad}");
        }
        assert_eq!(
            member_at("4=127.0.0.1:7004"),
            Ok((4, "127.0.0.1:7004".parse().unwrap()))
        );
        for bad in [
            "4",
            "=127.0.0.1:7004",
            "0=127.0.0.1:7004",
            "4=x",
            "4=0.0.0.0:1",
            "x=1",
        ] {
            assert!(member_at(bad).is_err(), "{bad}");
        }
        assert!(node_addr("127.0.0.1:7001").is_ok());
        assert!(node_addr("[::1]:7001").is_ok());
        for bad in [
            "127.0.0.1:0",
            "0.0.0.0:7001",
            "[::]:7001",
            "224.0.0.1:7001",
            "x",
            "127.0.0.1",
        ] {
            assert!(node_addr(bad).is_err(), "{bad}");
        }
    }
}
