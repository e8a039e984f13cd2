//! Certificates of a cluster: a cluster CA, node certificates that carry the node id, and
//! client certificates that carry a name and a role (`client` or `admin`). What
//! `coracle certs init` and `coracle certs issue` write.
//!
//! Identities live in the subject alternative names (DNS names), so every TLS stack can
//! check them:
//!
//! | certificate | SANs | extended key usage |
//! |---|---|---|
//! | node `7` | `node-7.coracle`, `node.coracle` | server and client auth |
//! | client `alice` | `alice.client.coracle` | client auth |
//! | admin client `ops` | `ops.admin.coracle` | client auth |
//!
//! A node dialing node 7 verifies the server name `node-7.coracle`; a client that may talk
//! to any node verifies `node.coracle` (which only node certificates carry, and which needs
//! the server-auth usage that client certificates lack). A node learns who is at the other
//! end of a connection with [`Identity::from_der`] on the certificate the TLS handshake
//! verified, never from anything the peer says afterwards.
//!
//! ```
//! use coracle_quic::certs::{Ca, Identity};
//! let ca = Ca::generate("demo cluster", 365).unwrap();
//! let node = ca.issue(&Identity::Node(3), 365).unwrap();
//! let der = node.der().unwrap();
//! assert_eq!(Identity::from_der(&der).unwrap(), Identity::Node(3));
//! ```

use coracle::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::fmt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The DNS name every node certificate carries, that clients verify.
pub const ANY_NODE_NAME: &str = "node.coracle";

/// The DNS name node `id`'s certificate carries, that other nodes verify.
pub fn node_server_name(id: NodeId) -> String {
    format!("node-{id}.coracle")
}

/// Who holds a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A node of the cluster.
    Node(NodeId),
    /// A client; `admin` clients may also change the membership.
    Client {
        /// Its name (letters, digits, `-` and `_`).
        name: String,
        /// May run `coracle admin` operations.
        admin: bool,
    },
}

impl Identity {
    /// The identity written in a (verified) certificate's subject alternative names.
    pub fn from_der(der: &[u8]) -> Result<Identity, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::Parse(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertError::Parse(e.to_string()))?
            .ok_or(CertError::NoIdentity)?;
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                if let Some(id) = dns
                    .strip_prefix("node-")
                    .and_then(|s| s.strip_suffix(".coracle"))
                {
                    if let Ok(id) = id.parse::<NodeId>() {
                        return Ok(Identity::Node(id));
                    }
                }
                if let Some(name) = dns.strip_suffix(".admin.coracle") {
                    return Ok(Identity::Client {
                        name: name.to_string(),
                        admin: true,
                    });
                }
                if let Some(name) = dns.strip_suffix(".client.coracle") {
                    return Ok(Identity::Client {
                        name: name.to_string(),
                        admin: false,
                    });
                }
            }
        }
        Err(CertError::NoIdentity)
    }

    /// The base of the file names `coracle certs issue` writes (`node-3`, `client-alice`,
    /// `admin-ops`).
    pub fn file_stem(&self) -> String {
        match self {
            Identity::Node(id) => format!("node-{id}"),
            Identity::Client { name, admin: false } => format!("client-{name}"),
            Identity::Client { name, admin: true } => format!("admin-{name}"),
        }
    }

    fn sans(&self) -> Vec<String> {
        match self {
            Identity::Node(id) => vec![node_server_name(*id), ANY_NODE_NAME.to_string()],
            Identity::Client { name, admin: false } => vec![format!("{name}.client.coracle")],
            Identity::Client { name, admin: true } => vec![format!("{name}.admin.coracle")],
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Client { name, admin: false } => write!(f, "client {name}"),
            Identity::Client { name, admin: true } => write!(f, "admin client {name}"),
        }
    }
}

/// What went wrong with a certificate or key.
#[derive(Debug)]
pub enum CertError {
    /// Generating or signing failed.
    Generate(rcgen::Error),
    /// A certificate could not be parsed.
    Parse(String),
    /// The certificate carries no node or client identity.
    NoIdentity,
    /// A client name with characters other than letters, digits, `-` and `_`.
    BadName(String),
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file exists already (no overwriting of keys).
    Exists(PathBuf),
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Generate(e) => write!(f, "certificate generation failed: {e}"),
            CertError::Parse(e) => write!(f, "certificate cannot be parsed: {e}"),
            CertError::NoIdentity => {
                f.write_str("certificate carries no coracle node or client identity")
            }
            CertError::BadName(n) => write!(
                f,
                "client name {n:?} must be non-empty letters, digits, '-' or '_'"
            ),
            CertError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CertError::Exists(p) => write!(f, "{} exists already; not overwriting it", p.display()),
        }
    }
}

impl std::error::Error for CertError {}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Generate(e)
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Issued {
    /// The certificate in DER.
    pub fn der(&self) -> Result<Vec<u8>, CertError> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map(|c| c.to_vec())
            .map_err(|e| CertError::Parse(e.to_string()))
    }

    /// Writes `DIR/STEM.pem` and `DIR/STEM.key` (the key readable by the owner only).
    /// Refuses to overwrite either file.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CertError> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        for p in [&cert, &key] {
            if p.exists() {
                return Err(CertError::Exists(p.clone()));
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        write_private(&key, self.key_pem.as_bytes())?;
        std::fs::write(&cert, &self.cert_pem).map_err(|source| CertError::Io {
            path: cert.clone(),
            source,
        })?;
        Ok((cert, key))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = options.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days.max(1)));
}

/// A cluster certificate authority: signs node and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA (ECDSA P-256), valid for `days` days, named `name`.
    pub fn generate(name: &str, days: u32) -> Result<Ca, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("coracle CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, days);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key files (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, CertError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let key_pair = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair)?;
        Ok(Ca {
            issuer,
            cert_pem,
            key_pem,
        })
    }

    /// The CA certificate (PEM), what every node and client trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `DIR/ca.pem` and `DIR/ca.key`; refuses to overwrite.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), CertError> {
        Issued {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
        .write(dir, "ca")
    }

    /// A certificate for `identity`, valid for `days` days, signed by this CA.
    pub fn issue(&self, identity: &Identity, days: u32) -> Result<Issued, CertError> {
        if let Identity::Client { name, .. } = identity {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(CertError::BadName(name.clone()));
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(identity.sans())?;
        params
            .distinguished_name
            .push(DnType::CommonName, identity.to_string());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity {
            Identity::Node(_) => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Identity::Client { .. } => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        validity(&mut params, days);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_roundtrip_through_certificates() {
        let ca = Ca::generate("t", 2).unwrap();
        for id in [
            Identity::Node(1),
            Identity::Node(u64::MAX),
            Identity::Client {
                name: "alice".into(),
                admin: false,
            },
            Identity::Client {
                name: "ops_1".into(),
                admin: true,
            },
        ] {
            let issued = ca.issue(&id, 2).unwrap();
            assert_eq!(Identity::from_der(&issued.der().unwrap()).unwrap(), id);
        }
        assert!(matches!(
            ca.issue(
                &Identity::Client {
                    name: "a.b".into(),
                    admin: false
                },
                1
            ),
            Err(CertError::BadName(_))
        ));
        assert!(Identity::from_der(b"garbage").is_err());
    }
}
