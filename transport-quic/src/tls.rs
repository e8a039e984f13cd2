//! TLS for QUIC: mutual authentication against the cluster CA, TLS 1.3 only, ALPN
//! [`ALPN`]. Every rustls configuration is built with `builder_with_provider` and the ring
//! provider, so nothing depends on a process-wide default.

use crate::certs::{Identity, ANY_NODE_NAME};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Our application protocol: a peer that does not speak it fails the handshake.
pub const ALPN: &[u8] = b"coracle/1";

/// What went wrong loading certificates or building a TLS configuration.
#[derive(Debug)]
pub enum TlsError {
    /// A certificate or key file is missing or unreadable.
    File {
        /// Which file it is (`"CA certificate"`, `"certificate"`, `"private key"`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        message: String,
    },
    /// The files were read but rustls refused them (key does not match, bad CA...).
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::File {
                what,
                path,
                message,
            } => write!(f, "{what} {}: {message}", path.display()),
            TlsError::Config(m) => write!(f, "TLS configuration: {m}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The certificate, key and trusted CA of one node or client, loaded from PEM files.
#[derive(Debug)]
pub struct Credentials {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn certs_from(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

impl Credentials {
    /// Loads the CA certificate, this party's certificate (chain) and its private key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, TlsError> {
        let ca_certs = certs_from("CA certificate", ca)?;
        let chain = certs_from("certificate", cert)?;
        let key_bytes = std::fs::read(key).map_err(|e| TlsError::File {
            what: "private key",
            path: key.to_path_buf(),
            message: e.to_string(),
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::File {
            what: "private key",
            path: key.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Credentials {
            ca: ca_certs,
            chain,
            key,
        })
    }

    /// Credentials from PEM text (CA certificate, certificate, key).
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Credentials, TlsError> {
        let parse = |what: &'static str, pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Config(format!("{what}: {e}")))
        };
        Ok(Credentials {
            ca: parse("CA certificate", ca)?,
            chain: parse("certificate", cert)?,
            key: PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| TlsError::Config(format!("private key: {e}")))?,
        })
    }

    /// The identity in this party's own certificate.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| TlsError::Config("empty certificate chain".into()))?;
        Identity::from_der(leaf).map_err(|e| TlsError::Config(e.to_string()))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in &self.ca {
            roots
                .add(c.clone())
                .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        }
        Ok(Arc::new(roots))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Connection-level QUIC settings shared by nodes and clients.
#[derive(Clone, Debug)]
pub struct QuicSettings {
    /// Interval of keep-alive packets on idle connections.
    pub keep_alive: Duration,
    /// A connection silent for this long is closed (and the peer reported unreachable).
    pub idle_timeout: Duration,
}

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
        }
    }
}

/// The largest UDP payload a node or client sends (once MTU discovery found the path
/// carries it) and accepts. quinn's default search stops at 1452 bytes, Ethernet's MTU;
/// loopback and jumbo-frame networks carry more, and then a round of AppendEntries or of
/// client requests leaves in fewer datagrams, each decrypted, acknowledged and handed to
/// the kernel once: at 64 clients on loopback, 59 000-60 000 writes/s against 51 000-55 000
/// (README, Performance). On a 1500-byte path the probes above it are lost and discovery
/// settles on what the path carries, as before, after about 15 lost probes (quinn sends a
/// probe when a connection has nothing else to send; a lost one costs no data).
///
/// Capped so that quinn's largest send, 10 datagrams in one `sendmsg` (segmentation
/// offload), stays within the 65 507 bytes the kernel takes at once: a larger batch is
/// refused (`EMSGSIZE`) and quinn-udp drops it silently, a loss every time a connection
/// has much to send (at 16 384 bytes, stalls of 100-700 ms under `coracle bench`).
pub const MAX_UDP_PAYLOAD: u16 = 6500;

/// The most datagrams quinn puts in one send (`MAX_TRANSMIT_SEGMENTS` in quinn 0.11, not
/// exported); a test checks that so many at [`MAX_UDP_PAYLOAD`] fit in one `sendmsg`.
const QUINN_SEGMENTS_PER_SEND: usize = 10;
const _: () = assert!(MAX_UDP_PAYLOAD as usize * QUINN_SEGMENTS_PER_SEND <= 65_507);

/// The endpoint settings of nodes and clients: they accept datagrams of up to
/// [`MAX_UDP_PAYLOAD`] bytes (and tell their peers so in the handshake).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("MAX_UDP_PAYLOAD is within QUIC's limits");
    config
}

fn transport(settings: &QuicSettings) -> Result<Arc<quinn::TransportConfig>, TlsError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(settings.keep_alive));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(settings.idle_timeout)
            .map_err(|e| TlsError::Config(format!("idle timeout: {e}")))?,
    ));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4096));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(64));
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    Ok(Arc::new(t))
}

/// The server side of a node: requires a client certificate signed by the cluster CA.
pub fn server_config(
    creds: &Credentials,
    settings: &QuicSettings,
) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(creds.roots()?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(settings)?);
    Ok(config)
}

/// The client side (a node dialing a node, or a KV client): presents this party's
/// certificate and verifies the server's against the cluster CA.
pub fn client_config(
    creds: &Credentials,
    settings: &QuicSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(creds.roots()?)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(settings)?);
    Ok(config)
}

/// The identity of the peer of an established connection, from the certificate the
/// handshake verified.
pub fn peer_identity(conn: &quinn::Connection) -> Option<Identity> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    Identity::from_der(certs.first()?).ok()
}

/// The server name a client uses when any node of the cluster will do.
pub fn any_node() -> &'static str {
    ANY_NODE_NAME
}

#[cfg(test)]
mod tests {
    use super::*;

    /// quinn's largest send at the cap, [`QUINN_SEGMENTS_PER_SEND`] datagrams of
    /// [`MAX_UDP_PAYLOAD`] bytes in one `sendmsg`, is taken by the kernel; one more
    /// datagram's worth is refused, which is what the cap guards against. (Where the
    /// kernel has no segmentation offload, quinn sends one datagram at a time.) MTU
    /// discovery itself is tested in `tests/mtu.rs`.
    #[test]
    fn quinns_largest_send_at_the_cap_is_taken_by_the_kernel() {
        let socket = crate::transport::bind_udp(([127, 0, 0, 1], 0).into()).unwrap();
        let state = quinn::udp::UdpSocketState::new((&socket).into()).unwrap();
        let segments = state.max_gso_segments().min(QUINN_SEGMENTS_PER_SEND);
        let size = usize::from(MAX_UDP_PAYLOAD);
        let bytes = vec![0u8; size * (QUINN_SEGMENTS_PER_SEND + 1)];
        let send = |n: usize| {
            let transmit = quinn::udp::Transmit {
                destination: socket.local_addr().unwrap(),
                ecn: None,
                contents: &bytes[..size * n],
                segment_size: (n > 1).then_some(size),
                src_ip: None,
            };
            state.try_send((&socket).into(), &transmit)
        };
        send(segments).unwrap();
        if segments == QUINN_SEGMENTS_PER_SEND {
            assert!(send(segments + 1).is_err(), "the cap could be higher");
        }
    }
}
