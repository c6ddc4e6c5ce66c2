//! Transport security for the mesh data plane: TLS, and mutual TLS, with
//! rustls (through tonic's `tls-ring` feature).
//!
//! ```text
//!  node A (router, client side)                 node B (mesh server)
//!   https://B:port  ── ClientHello, SNI = server_name or B's host ──>
//!   verifies B's certificate against `ca`       presents `cert` + `key`
//!   presents `cert` + `key` as client identity  verifies it against `ca`
//!                                               when `require_client_cert`
//! ```
//!
//! Every node has one identity (`cert`, `key`) that it uses both as a server
//! and as a client, and one trust anchor (`ca`) that signs every member's
//! certificate. With mutual TLS the certificate must therefore allow both
//! `serverAuth` and `clientAuth` (or have no extended key usage at all).
//!
//! Peers are dialled at the address they advertise in gossip, usually an IP
//! address. The certificate must name it (an IP subject alternative name), or
//! every certificate names one shared DNS name that is set as `server_name`.
//!
//! There are no built-in web roots: the mesh trusts only its own CA, so a
//! certificate from any public CA is refused.

use std::fmt;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// TLS settings of the mesh, with the PEM contents already read.
#[derive(Clone)]
pub struct MeshTls {
    /// This node's certificate chain (PEM), leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key of `cert_pem` (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
    /// The CA that signs every member's certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// Refuse peers that present no certificate signed by `ca` (mutual
    /// TLS). Default true.
    pub require_client_cert: bool,
    /// The name to verify in a peer's certificate instead of the host of its
    /// advertised address. Default none.
    pub server_name: Option<String>,
}

impl fmt::Debug for MeshTls {
    // Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("require_client_cert", &self.require_client_cert)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading mesh.tls.{setting} from {path}: {source}")]
    Read {
        /// `cert`, `key` or `ca`.
        setting: &'static str,
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the expected kind.
    #[error("mesh.tls.{setting}: {path} holds no PEM {expected}")]
    NotPem {
        /// `cert`, `key` or `ca`.
        setting: &'static str,
        /// The path given.
        path: PathBuf,
        /// What was looked for.
        expected: &'static str,
    },
    /// rustls refused the certificate or key.
    #[error("mesh.tls: {0}")]
    Rustls(String),
}

impl MeshTls {
    /// Reads the three PEM files; `require_client_cert` defaults to true.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            cert_pem: read_pem("cert", cert, "CERTIFICATE")?,
            key_pem: read_pem("key", key, "PRIVATE KEY")?,
            ca_pem: read_pem("ca", ca, "CERTIFICATE")?,
            require_client_cert: true,
            server_name: None,
        })
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The server side: this node's identity, and the CA that client
    /// certificates must chain to when they are required.
    pub fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(self.identity());
        if self.require_client_cert {
            config.client_ca_root(Certificate::from_pem(&self.ca_pem))
        } else {
            config
        }
    }

    /// The client side for a peer reached at `host` (the host part of its
    /// advertised address): trusts only `ca`, verifies `server_name` or
    /// `host`, and presents this node's identity.
    pub fn client_config(&self, host: &str) -> ClientTlsConfig {
        let name = self.server_name.as_deref().unwrap_or(host);
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.identity())
            .domain_name(name.trim_start_matches('[').trim_end_matches(']'))
    }

    /// Builds both sides once, so that a bad certificate or key is reported
    /// when the node starts rather than on the first connection.
    pub fn check(&self) -> Result<(), TlsError> {
        let server = tonic::transport::Server::builder().tls_config(self.server_config());
        if let Err(e) = server {
            return Err(TlsError::Rustls(format!("server side: {}", source_chain(&e))));
        }
        let endpoint = tonic::transport::Endpoint::from_static("https://127.0.0.1:1");
        if let Err(e) = endpoint.tls_config(self.client_config("127.0.0.1")) {
            return Err(TlsError::Rustls(format!("client side: {}", source_chain(&e))));
        }
        Ok(())
    }
}

fn read_pem(setting: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })?;
    // "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY".
    let marker = format!("{expected}-----");
    if !String::from_utf8_lossy(&bytes).contains(&marker) {
        return Err(TlsError::NotPem {
            setting,
            path: path.to_owned(),
            expected,
        });
    }
    Ok(bytes)
}

/// An error with its sources, which is where tonic keeps rustls's reason.
pub(crate) fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
