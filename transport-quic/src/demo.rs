//! `coracle demo`: a 3-node cluster as separate processes on 127.0.0.1, with a temporary
//! CA and data directories. In a terminal it shows the cluster live ([`live`]); with
//! `--script`, or when standard output is not a terminal, it walks through the classic
//! failure scenarios and prints what happened with measured times ([`script`]), exiting
//! non-zero if any outcome was not the expected one.

pub mod cluster;
pub mod live;
pub mod script;

use crate::{Error, Unexpected};
use clap::Args;
use std::io::IsTerminal;

/// Options of `coracle demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Run the scenarios and print what happened (the default without a terminal).
    #[arg(long)]
    pub script: bool,
    /// Number of nodes (the scenarios assume at least 3).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=7))]
    pub nodes: u8,
    /// Minimum election timeout of the nodes, in milliseconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(cluster::ELECTION_TIMEOUT_MS))]
    pub election_timeout_ms: u64,
    /// Heartbeat interval of the leader, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(5..=10_000))]
    pub heartbeat_ms: u64,
    /// Keep the temporary directory (certificates, data, node logs) afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<(), Error> {
    if args.heartbeat_ms >= args.election_timeout_ms {
        return Err("the heartbeat must be shorter than the election timeout".into());
    }
    let mut cluster = cluster::Cluster::create(&cluster::Options {
        nodes: usize::from(args.nodes),
        election_timeout_ms: args.election_timeout_ms,
        heartbeat_ms: args.heartbeat_ms,
        keep: args.keep,
    })?;
    let live = !args.script && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let ok = if live {
        live::run(&mut cluster)?;
        true
    } else {
        script::run(&mut cluster)
    };
    if args.keep {
        println!("kept {}", cluster.dir().display());
    }
    drop(cluster);
    if ok {
        Ok(())
    } else {
        Err(Box::new(Unexpected))
    }
}
