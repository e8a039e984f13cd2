//! TLS for QUIC: mutual authentication against the cluster CA, TLS 1.3 only, ALPN
//! [`ALPN`]. Every rustls configuration is built with `builder_with_provider` and the ring
//! provider, so nothing depends on a process-wide default.

use crate::certs::{Identity, ANY_NODE_NAME};
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
    /// The private key is not the key of the certificate.
    KeyMismatch {
        /// The certificate.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// The certificate is not one the CA vouches for: signed by another CA, expired, not
    /// yet valid. Every node would refuse it during the handshake.
    Untrusted {
        /// The certificate.
        cert: PathBuf,
        /// The CA certificate.
        ca: PathBuf,
        /// Why.
        reason: String,
    },
    /// The files were read but rustls refused them (unsupported key type, bad CA...).
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
            TlsError::KeyMismatch { cert, key } => write!(
                f,
                "private key {} does not belong to certificate {} (the public key in the \
                 certificate is another key's; give the .key file written with that .pem)",
                key.display(),
                cert.display()
            ),
            TlsError::Untrusted { cert, ca, reason } => write!(
                f,
                "certificate {} is refused by the CA {}: {reason}",
                cert.display(),
                ca.display()
            ),
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

/// The PEM sections of a file, or what is wrong with it.
fn pem_sections(bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".into());
    }
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("damaged PEM ({e})"))?;
    if sections.is_empty() {
        return Err("no PEM section in it (-----BEGIN ...-----): not a PEM file".into());
    }
    Ok(sections)
}

/// What a file holds, for messages: "a certificate", "a private key"...
fn holds(sections: &[(SectionKind, Vec<u8>)]) -> String {
    let kinds: Vec<&str> = sections
        .iter()
        .map(|(kind, _)| match kind {
            SectionKind::Certificate => "a certificate",
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                "a private key"
            }
            SectionKind::PublicKey => "a public key",
            SectionKind::Crl => "a revocation list",
            SectionKind::Csr => "a certificate request",
            _ => "another PEM section",
        })
        .collect();
    kinds.join(" and ")
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The certificates in PEM text, or why there are none.
fn certs_in(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let sections = pem_sections(bytes)?;
    let certs: Vec<CertificateDer<'static>> = sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if certs.is_empty() {
        return Err(format!("it holds {}, not a certificate", holds(&sections)));
    }
    Ok(certs)
}

/// The private key in PEM text, or why there is none.
fn key_in(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let sections = pem_sections(bytes)?;
    sections
        .iter()
        .find_map(|(kind, der)| PrivateKeyDer::from_pem(*kind, der.clone()))
        .ok_or_else(|| format!("it holds {}, not a private key", holds(&sections)))
}

fn certs_from(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_in(&read_file(what, path)?).map_err(|message| TlsError::File {
        what,
        path: path.to_path_buf(),
        message,
    })
}

/// Checks that every certificate of a CA file is a CA's.
fn check_ca(path: &Path, certs: &[CertificateDer<'static>]) -> Result<(), TlsError> {
    for cert in certs {
        let is_ca = x509_parser::parse_x509_certificate(cert).map(|(_, c)| c.is_ca());
        let message = match is_ca {
            Ok(true) => continue,
            Ok(false) => "not a CA certificate (the ca.pem that `coracle certs init` wrote is one)"
                .to_string(),
            Err(e) => format!("a certificate that cannot be parsed ({e})"),
        };
        return Err(TlsError::File {
            what: "CA certificate",
            path: path.to_path_buf(),
            message,
        });
    }
    Ok(())
}

/// Pairs the certificate chain with its key; `KeyMismatch` if they are not a pair.
fn certified(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    paths: Option<(&Path, &Path)>,
) -> Result<(), TlsError> {
    use rustls::sign::CertifiedKey;
    match CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            let (cert, key) = paths.unwrap_or((Path::new("(certificate)"), Path::new("(key)")));
            Err(TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        Err(e) => Err(match paths {
            Some((_, key)) => TlsError::File {
                what: "private key",
                path: key.to_path_buf(),
                message: format!("not a key this build can use ({e})"),
            },
            None => TlsError::Config(format!("private key: {e}")),
        }),
    }
}

impl Credentials {
    /// Loads the CA certificate, this party's certificate (chain) and its private key, and
    /// checks them as the peers will: the key is the certificate's, the certificate is
    /// signed by the CA and valid now. Each error names the file and what is wrong with it
    /// (a key where the certificate should be, a certificate of another cluster, an expired
    /// one...).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, TlsError> {
        let ca_certs = certs_from("CA certificate", ca)?;
        check_ca(ca, &ca_certs)?;
        let chain = certs_from("certificate", cert)?;
        let key_der =
            key_in(&read_file("private key", key)?).map_err(|message| TlsError::File {
                what: "private key",
                path: key.to_path_buf(),
                message,
            })?;
        certified(&chain, &key_der, Some((cert, key)))?;
        let creds = Credentials {
            ca: ca_certs,
            chain,
            key: key_der,
        };
        creds.verify_own().map_err(|reason| TlsError::Untrusted {
            cert: cert.to_path_buf(),
            ca: ca.to_path_buf(),
            reason,
        })?;
        Ok(creds)
    }

    /// Verifies this party's own certificate against its CA, as a peer will (a client
    /// certificate check: every certificate of ours carries client authentication).
    fn verify_own(&self) -> Result<(), String> {
        let verifier = WebPkiClientVerifier::builder_with_provider(
            self.roots().map_err(|e| e.to_string())?,
            provider(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        let (leaf, intermediates) = self
            .chain
            .split_first()
            .ok_or("the certificate file holds no certificate")?;
        let validity = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| {
                let v = c.validity();
                (v.not_before.to_datetime(), v.not_after.to_datetime())
            })
            .ok();
        let now = rustls::pki_types::UnixTime::now();
        match verifier.verify_client_cert(leaf, intermediates, now) {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(e)) => Err(match e {
                rustls::CertificateError::UnknownIssuer
                | rustls::CertificateError::BadSignature => {
                    "it is not signed by this CA (a certificate of another cluster?); issue \
                     one with `coracle certs issue` from this CA"
                        .to_string()
                }
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. } => match validity {
                    Some((_, end)) => {
                        format!("it expired on {}; issue a new one", crate::certs::date(end))
                    }
                    None => "it has expired; issue a new one".into(),
                },
                rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. } => match validity {
                    Some((start, _)) => format!(
                        "it is not valid before {} (is this machine's clock right?)",
                        crate::certs::date(start)
                    ),
                    None => "it is not valid yet (is this machine's clock right?)".into(),
                },
                other => format!("{other}"),
            }),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Credentials from PEM text (CA certificate, certificate, key).
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Credentials, TlsError> {
        let parse = |what: &'static str, pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Config(format!("{what}: {e}")))
        };
        let creds = Credentials {
            ca: parse("CA certificate", ca)?,
            chain: parse("certificate", cert)?,
            key: key_in(key.as_bytes())
                .map_err(|e| TlsError::Config(format!("private key: {e}")))?,
        };
        certified(&creds.chain, &creds.key, None)?;
        Ok(creds)
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
    with_max_payload(quinn::EndpointConfig::default())
}

fn with_max_payload(mut config: quinn::EndpointConfig) -> quinn::EndpointConfig {
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("MAX_UDP_PAYLOAD is within QUIC's limits");
    config
}

/// The keys of a node's endpoint that outlive its process: derived from its private key,
/// so a node restarted with the same credentials has the same ones.
///
/// Why: a peer still holding a connection to the node's previous run keeps sending on it
/// (heartbeats, keep-alives). With the same connection-ID key the restarted node knows
/// those packets for its own, and with the same reset key it answers them with a QUIC
/// stateless reset (RFC 9000 10.3) the peer can verify: the peer drops the dead connection
/// at once and redials, instead of waiting out its idle timeout (3 s by default). Derived
/// with HMAC-SHA256 under distinct labels; the private key never leaves this function, and
/// the reset tokens cannot be computed without it (an attacker who could would be able to
/// end the node's connections).
pub struct EndpointKeys {
    /// The key of the stateless reset tokens (quinn's `reset_key`).
    pub(crate) reset: Arc<ring::hmac::Key>,
    /// The key of the keyed connection IDs ([`crate::stray`]).
    pub(crate) connection_ids: u64,
}

impl Credentials {
    /// The endpoint keys of the holder of these credentials.
    pub fn endpoint_keys(&self) -> EndpointKeys {
        use ring::hmac;
        let root = hmac::Key::new(hmac::HMAC_SHA256, self.key.secret_der());
        let reset = hmac::sign(&root, b"coracle endpoint: stateless reset key");
        let ids = hmac::sign(&root, b"coracle endpoint: connection id key");
        let mut first = [0u8; 8];
        first.copy_from_slice(&ids.as_ref()[..8]);
        EndpointKeys {
            reset: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())),
            connection_ids: u64::from_le_bytes(first),
        }
    }
}

/// The endpoint settings of a node: [`endpoint_config`] with the stateless reset key of
/// `keys` (the connection IDs are set by [`crate::stray`]).
pub fn node_endpoint_config(keys: &EndpointKeys) -> quinn::EndpointConfig {
    with_max_payload(quinn::EndpointConfig::new(keys.reset.clone()))
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

    /// Files in a temporary directory: a cluster CA, node 1's files, another CA's node.
    struct Files(std::path::PathBuf);

    impl Files {
        fn new(tag: &str) -> Files {
            use crate::certs::{Ca, Identity};
            let dir =
                std::env::temp_dir().join(format!("coracle-tls-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let ca = Ca::generate("t", 2).unwrap();
            ca.write(&dir).unwrap();
            ca.issue(&Identity::Node(1), 1)
                .unwrap()
                .write(&dir, "node-1")
                .unwrap();
            ca.issue(&Identity::Node(2), 1)
                .unwrap()
                .write(&dir, "node-2")
                .unwrap();
            let other = Ca::generate("other", 2).unwrap();
            other
                .issue(&Identity::Node(1), 1)
                .unwrap()
                .write(&dir, "foreign")
                .unwrap();
            std::fs::write(dir.join("empty"), b"").unwrap();
            std::fs::write(dir.join("garbage"), b"\x00\x01 not pem at all").unwrap();
            Files(dir)
        }

        fn load(&self, ca: &str, cert: &str, key: &str) -> Result<Credentials, TlsError> {
            Credentials::load(&self.0.join(ca), &self.0.join(cert), &self.0.join(key))
        }

        /// The error message of loading these files.
        fn error(&self, ca: &str, cert: &str, key: &str) -> String {
            match self.load(ca, cert, key) {
                Ok(_) => panic!("{ca} {cert} {key} accepted"),
                Err(e) => e.to_string(),
            }
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A node restarted with its credentials has the endpoint keys of its previous run (so
    /// its stateless resets are valid for its peers' old connections); another node has
    /// others.
    #[test]
    fn endpoint_keys_are_the_same_after_a_restart_and_differ_between_nodes() {
        use quinn::crypto::HmacKey;
        let f = Files::new("endpoint-keys");
        let keys = |stem: &str| {
            f.load("ca.pem", &format!("{stem}.pem"), &format!("{stem}.key"))
                .unwrap()
                .endpoint_keys()
        };
        let sign = |k: &EndpointKeys| {
            let mut tag = vec![0u8; k.reset.signature_len()];
            k.reset.sign(b"a connection id", &mut tag);
            tag
        };
        let (first, again, other) = (keys("node-1"), keys("node-1"), keys("node-2"));
        assert_eq!(sign(&first), sign(&again));
        assert_eq!(first.connection_ids, again.connection_ids);
        assert_ne!(sign(&first), sign(&other));
        assert_ne!(first.connection_ids, other.connection_ids);
    }

    /// Each wrong file is named, with what it holds instead ("private key ...: no items
    /// found" was all a swapped key file got, and a key of another certificate showed only
    /// as "cannot listen on ...: KeyMismatch").
    #[test]
    fn wrong_certificate_files_are_named_with_what_is_wrong() {
        let f = Files::new("wrong");
        assert!(f.load("ca.pem", "node-1.pem", "node-1.key").is_ok());
        let cases = [
            // A certificate where the key should be, and the other way round.
            (("ca.pem", "node-1.pem", "node-1.pem"), "private key"),
            (
                ("ca.pem", "node-1.pem", "node-1.pem"),
                "holds a certificate, not a private key",
            ),
            (
                ("ca.pem", "node-1.key", "node-1.key"),
                "holds a private key, not a certificate",
            ),
            (
                ("ca.key", "node-1.pem", "node-1.key"),
                "holds a private key, not a certificate",
            ),
            // Empty and non-PEM files.
            (("ca.pem", "node-1.pem", "empty"), "empty"),
            (("ca.pem", "garbage", "node-1.key"), "not a PEM file"),
            (("ca.pem", "node-1.pem", "missing"), "missing"),
            // A key of another certificate.
            (
                ("ca.pem", "node-1.pem", "node-2.key"),
                "does not belong to certificate",
            ),
            // A node certificate given as the CA.
            (
                ("node-2.pem", "node-1.pem", "node-1.key"),
                "not a CA certificate",
            ),
            // A certificate of another cluster's CA.
            (
                ("ca.pem", "foreign.pem", "foreign.key"),
                "not signed by this CA",
            ),
        ];
        for ((ca, cert, key), expected) in cases {
            let m = f.error(ca, cert, key);
            assert!(m.contains(expected), "{ca} {cert} {key}: {m}");
        }
    }

    #[test]
    fn an_expired_certificate_is_refused_with_its_date() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use time::{Duration, OffsetDateTime};
        let f = Files::new("expired");
        let now = OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["node-1.coracle".to_string()]).unwrap();
        params.not_before = now - Duration::days(10);
        params.not_after = now - Duration::days(2);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(f.0.join("old-ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(f.0.join("old.pem"), cert.pem()).unwrap();
        std::fs::write(f.0.join("old.key"), key.serialize_pem()).unwrap();
        let m = f.error("old-ca.pem", "old.pem", "old.key");
        let date = crate::certs::date(params.not_after);
        assert!(m.contains("expired on") && m.contains(&date), "{m}");
    }
}
