//! A cluster on 127.0.0.1 in one directory, to try a state machine with
//! [`Host`](crate::host::Host) or to test it: a CA, a certificate and a configuration for
//! each node, on free ports (what `coracle certs` and a hand-written `node.toml` make), the
//! configurations also written as `node-ID.toml` for nodes run as processes of their own.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("coracle-loopback-doc-{}", std::process::id()));
//! let configs = coracle_quic::loopback::configs(&dir, 3, "[raft]\nelection_timeout_ms = 200\n")?;
//! assert_eq!(configs.len(), 3);
//! assert_eq!(configs[2].raft.election_timeout_ms, 200);
//! // Host::start(&configs[0], MyStateMachine::default())?; ...
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```

use crate::certs::{Ca, CertError, Identity};
use crate::config::{ConfigError, NodeConfig};
use std::fmt;
use std::io;
use std::net::UdpSocket;
use std::path::Path;

/// Why a loopback cluster's files cannot be made.
#[derive(Debug)]
pub enum LoopbackError {
    /// The directory cannot be written, or no free port is to be had.
    Io(io::Error),
    /// A certificate cannot be made or written.
    Cert(CertError),
    /// The configuration (with the text added to it) is not valid.
    Config(ConfigError),
}

impl fmt::Display for LoopbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoopbackError::Io(e) => write!(f, "loopback cluster: {e}"),
            LoopbackError::Cert(e) => write!(f, "loopback cluster: {e}"),
            LoopbackError::Config(e) => write!(f, "loopback cluster: {e}"),
        }
    }
}

impl std::error::Error for LoopbackError {}

impl From<io::Error> for LoopbackError {
    fn from(e: io::Error) -> Self {
        LoopbackError::Io(e)
    }
}

impl From<CertError> for LoopbackError {
    fn from(e: CertError) -> Self {
        LoopbackError::Cert(e)
    }
}

impl From<ConfigError> for LoopbackError {
    fn from(e: ConfigError) -> Self {
        LoopbackError::Config(e)
    }
}

/// Writes under `dir` (created if missing) a CA and the certificates (valid one day) of
/// nodes 1 to `nodes`, and returns their configurations: cluster id 7, each node on a free
/// UDP port of 127.0.0.1 (the ports are taken together, then let go: a small race, fine on
/// loopback), data in `dir/data-ID`, with `extra` (TOML sections such as `[raft]`)
/// appended to every node's configuration, each also written to `dir/node-ID.toml` (for
/// [`NodeConfig::load`] in another process). A directory that already holds a CA is refused
/// ([`LoopbackError::Cert`]), its files left as they were.
pub fn configs(dir: &Path, nodes: u64, extra: &str) -> Result<Vec<NodeConfig>, LoopbackError> {
    std::fs::create_dir_all(dir)?;
    let ca = Ca::generate("loopback", 1)?;
    ca.write(dir)?;
    let sockets = (0..nodes)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs = sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<Result<Vec<_>, _>>()?;
    drop(sockets);
    let peers: String = (1..)
        .zip(&addrs)
        .map(|(id, addr)| format!("[[peers]]\nid = {id}\naddr = \"{addr}\"\n"))
        .collect();
    let mut configs = Vec::new();
    for (id, addr) in (1..).zip(&addrs) {
        let stem = Identity::Node(id).file_stem();
        ca.issue(&Identity::Node(id), 1)?.write(dir, &stem)?;
        let text = format!(
            "id = {id}\ncluster_id = 7\nlisten = \"{addr}\"\ndata_dir = \"data-{id}\"\n{peers}\
             [tls]\nca = \"ca.pem\"\ncert = \"{stem}.pem\"\nkey = \"{stem}.key\"\n{extra}"
        );
        configs.push(NodeConfig::parse(&text, dir)?);
        std::fs::write(dir.join(format!("node-{id}.toml")), text)?;
    }
    Ok(configs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the report
mod tests {
    use super::*;

    #[test]
    fn garbage_added_to_the_configuration_is_a_clear_error() {
        let base = std::env::temp_dir().join(format!("coracle-loopback-{}", std::process::id()));
        let extras = [
            "[raft]\nelection_timeout_ms = \"soon\"\n",
            "\u{0}{{",
            "[nope]\nx = 1\n",
        ];
        for (i, extra) in extras.into_iter().enumerate() {
            match configs(&base.join(i.to_string()), 2, extra) {
                Err(LoopbackError::Config(e)) => assert!(e.to_string().contains("configuration")),
                other => panic!("{extra:?} gave {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_directory_that_holds_a_cluster_is_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("coracle-loopback-2-{}", std::process::id()));
        let first = configs(&dir, 3, "").unwrap();
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        match configs(&dir, 3, "") {
            Err(e @ LoopbackError::Cert(_)) => assert!(e.to_string().contains("ca.pem"), "{e}"),
            other => panic!("a second cluster in the same directory gave {other:?}"),
        }
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
        assert_eq!(first.len(), 3);
        for (id, config) in (1..).zip(&first) {
            let path = dir.join(format!("node-{id}.toml"));
            assert_eq!(
                &NodeConfig::load(&path).unwrap(),
                config,
                "{}",
                path.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
