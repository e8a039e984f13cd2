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
    /// A validity period of 0 days, or one that ends after the last date a certificate
    /// can hold (31 December 9999).
    BadValidity {
        /// The days asked for.
        days: u32,
        /// The most days a certificate made now can have.
        max: u32,
    },
    /// Node id 0: node ids start at 1.
    BadNodeId,
    /// A CA name that is empty, too long for a certificate's common name, or holds control
    /// characters.
    BadCaName(String),
    /// The CA files cannot sign: the certificate is no CA, the key is not its key, or the
    /// CA has expired.
    BadCa {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
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
            CertError::BadValidity { days: 0, .. } => {
                f.write_str("a validity of 0 days: a certificate must be valid for at least 1 day")
            }
            CertError::BadValidity { days, max } => write!(
                f,
                "a validity of {days} days ends after 9999-12-31, the last date a certificate \
                 can hold: at most {max} days from today"
            ),
            CertError::BadNodeId => f.write_str("node id 0: node ids start at 1"),
            CertError::BadCaName(n) => write!(
                f,
                "CA name {} must be 1 to {MAX_CA_NAME} characters, none of them a control \
                 character",
                excerpt(n)
            ),
            CertError::BadCa { path, reason } => write!(f, "{}: {reason}", path.display()),
            CertError::Generate(e) => write!(f, "certificate generation failed: {e}"),
            CertError::Parse(e) => write!(f, "certificate cannot be parsed: {e}"),
            CertError::NoIdentity => {
                f.write_str("certificate carries no coracle node or client identity")
            }
            CertError::BadName(n) => write!(
                f,
                "client name {} must be 1 to {MAX_CLIENT_NAME} letters, digits, '-' or '_'",
                excerpt(n)
            ),
            CertError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CertError::Exists(p) => write!(f, "{} exists already; not overwriting it", p.display()),
        }
    }
}

impl std::error::Error for CertError {}

/// A name for an error message: quoted, cut after 64 characters (with its length then).
fn excerpt(name: &str) -> String {
    let shown: String = name.chars().take(64).collect();
    if shown.len() == name.len() {
        format!("{shown:?}")
    } else {
        format!("{shown:?}... ({} characters)", name.chars().count())
    }
}

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
    /// The end of the certificate's validity.
    pub not_after: OffsetDateTime,
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

/// The longest CA name: a common name holds at most 64 characters (RFC 5280,
/// `ub-common-name`), of which `coracle CA ` takes 11.
pub const MAX_CA_NAME: usize = 64 - "coracle CA ".len();

/// The longest client name: a DNS label (63 bytes), as it goes in `NAME.client.coracle`.
pub const MAX_CLIENT_NAME: usize = 63;

/// The last moment an X.509 certificate can name (and the `time` crate represent).
fn last_date() -> OffsetDateTime {
    time::Date::MAX
        .with_hms(23, 59, 59)
        .map_or(OffsetDateTime::UNIX_EPOCH, |t| t.assume_utc())
}

/// The end of a validity of `days` days from `now`, or why there is none.
fn valid_until(now: OffsetDateTime, days: u32) -> Result<OffsetDateTime, CertError> {
    let max = u32::try_from((last_date() - now).whole_days()).unwrap_or(0);
    if days == 0 || days > max {
        return Err(CertError::BadValidity { days, max });
    }
    Ok(now + Duration::days(i64::from(days)))
}

/// A date as `YYYY-MM-DD` (UTC).
pub fn date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// A cluster certificate authority: signs node and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    not_after: OffsetDateTime,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA (ECDSA P-256), valid for `days` days (at least 1), named `name` (1 to
    /// [`MAX_CA_NAME`] characters, no control characters).
    pub fn generate(name: &str, days: u32) -> Result<Ca, CertError> {
        if name.is_empty()
            || name.chars().count() > MAX_CA_NAME
            || name.chars().any(char::is_control)
        {
            return Err(CertError::BadCaName(name.to_string()));
        }
        let now = OffsetDateTime::now_utc();
        let not_after = valid_until(now, days)?;
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
        params.not_before = now - Duration::hours(1);
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    /// Loads a CA from its certificate and key files (PEM). Refuses a certificate that is
    /// no CA, a key that is not the certificate's, and a CA that has expired: certificates
    /// signed with them would be refused by every node.
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, CertError> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let bad = |reason: String| CertError::BadCa {
            path: cert.to_path_buf(),
            reason,
        };
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| CertError::BadCa {
            path: key.to_path_buf(),
            reason: format!("no usable private key in it ({e})"),
        })?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("no PEM certificate in it ({e})")))?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
        if !x509.is_ca() {
            return Err(bad(
                "not a CA certificate (the ca.pem that `coracle certs init` wrote is one)".into(),
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
            return Err(CertError::BadCa {
                path: key.to_path_buf(),
                reason: format!("not the key of the CA certificate {}", cert.display()),
            });
        }
        let not_after = x509.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(bad(format!("the CA expired on {}", date(not_after))));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key_pair)?;
        Ok(Ca {
            issuer,
            cert_pem,
            key_pem,
            not_after,
        })
    }

    /// The end of the CA's validity: no certificate it signs is valid after it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
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
            not_after: self.not_after,
        }
        .write(dir, "ca")
    }

    /// A certificate for `identity`, valid for `days` days (at least 1), signed by this
    /// CA. A certificate never outlives its CA: its validity ends with the CA's if `days`
    /// would take it further ([`Issued::not_after`] says when it ends).
    pub fn issue(&self, identity: &Identity, days: u32) -> Result<Issued, CertError> {
        if *identity == Identity::Node(0) {
            return Err(CertError::BadNodeId);
        }
        let now = OffsetDateTime::now_utc();
        let not_after = valid_until(now, days)?.min(self.not_after);
        if let Identity::Client { name, .. } = identity {
            let ok = !name.is_empty()
                && name.len() <= MAX_CLIENT_NAME
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
        params.not_before = now - Duration::hours(1);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
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

    #[test]
    fn validity_periods_out_of_range_are_errors_not_panics() {
        // Both of these panicked in `time` ("resulting value is out of range").
        for days in [0, 100_000_000, u32::MAX] {
            assert!(
                matches!(Ca::generate("t", days), Err(CertError::BadValidity { .. })),
                "{days}"
            );
        }
        let ca = Ca::generate("t", 3).unwrap();
        for days in [0, 100_000_000, u32::MAX] {
            let err = ca.issue(&Identity::Node(1), days).unwrap_err();
            assert!(
                matches!(err, CertError::BadValidity { .. }),
                "{days}: {err}"
            );
            assert!(err.to_string().contains("days"), "{err}");
        }
        // The longest period there is still works (it ends in year 9999 at the latest).
        let long = Ca::generate("t", 2_000_000).unwrap();
        assert!(long.not_after().year() > 7000);
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let ca = Ca::generate("t", 3).unwrap();
        let issued = ca.issue(&Identity::Node(1), 825).unwrap();
        assert_eq!(issued.not_after, ca.not_after());
        let short = ca.issue(&Identity::Node(1), 1).unwrap();
        assert!(short.not_after < ca.not_after());
    }

    #[test]
    fn node_id_0_and_unusable_ca_names_are_refused() {
        let ca = Ca::generate("t", 2).unwrap();
        assert!(matches!(
            ca.issue(&Identity::Node(0), 1),
            Err(CertError::BadNodeId)
        ));
        let longest = "n".repeat(MAX_CA_NAME);
        assert!(Ca::generate(&longest, 1).is_ok());
        for name in ["", "a\nb", "tab\there", &format!("{longest}n")] {
            assert!(
                matches!(Ca::generate(name, 1), Err(CertError::BadCaName(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn ca_files_that_cannot_sign_are_refused_on_load() {
        let dir = std::env::temp_dir().join(format!("coracle-certs-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Ca::generate("t", 2).unwrap();
        ca.write(&dir).unwrap();
        let node = ca.issue(&Identity::Node(1), 1).unwrap();
        node.write(&dir, "node-1").unwrap();
        let other = Ca::generate("other", 2).unwrap();
        other.write(&dir.join("other")).unwrap();
        let load = |cert: &str, key: &str| Ca::load(&dir.join(cert), &dir.join(key));
        assert!(load("ca.pem", "ca.key").is_ok());
        let reason = |r: Result<Ca, CertError>| match r {
            Err(e @ CertError::BadCa { .. }) => e.to_string(),
            Err(e) => panic!("not BadCa: {e}"),
            Ok(_) => panic!("accepted"),
        };
        // A node certificate given as the CA.
        assert!(reason(load("node-1.pem", "node-1.key")).contains("not a CA"));
        // Another CA's key.
        assert!(reason(load("ca.pem", "other/ca.key")).contains("not the key"));
        // A certificate where the key should be, and garbage.
        assert!(reason(load("ca.pem", "ca.pem")).contains("private key"));
        std::fs::write(dir.join("garbage"), b"garbage").unwrap();
        assert!(reason(load("garbage", "ca.key")).contains("no PEM certificate"));
        // An expired CA.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.not_before = OffsetDateTime::now_utc() - Duration::days(10);
        params.not_after = OffsetDateTime::now_utc() - Duration::days(1);
        let old = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("old.pem"), old.pem()).unwrap();
        std::fs::write(dir.join("old.key"), key.serialize_pem()).unwrap();
        assert!(reason(load("old.pem", "old.key")).contains("expired"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
