//! Optional TLS, and mutual TLS, on the server's one listener (gRPC and the HTTP routes alike).
//!
//! The PEM files are read once, before the server opens its database, so that a bad certificate
//! or key stops the start with a message naming the file. Each accepted TCP connection then gets
//! its handshake in a task of its own (`crate::conn`), bounded by a deadline shared with the HTTP
//! preface: a client that connects and stalls is dropped when the deadline passes, and never
//! delays another client's accept or handshake. This module never looks inside a request: what
//! a connection may call is decided above it.

use crate::config::Config;
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// The server's TLS settings, loaded and checked: ready to accept connections.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    mutual: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificate, key and (for mTLS) client CA named in `config`. `None` when TLS
    /// is off; an error that names the file and the fault when a file is missing or unusable, or
    /// when a flag is given without its partner.
    pub fn load(config: &Config) -> Result<Option<Tls>> {
        let (cert_path, key_path) = match (&config.tls_cert, &config.tls_key) {
            (None, None) => {
                if config.tls_client_ca.is_some() {
                    return Err(Error::Config(
                        "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first"
                            .into(),
                    ));
                }
                return Ok(None);
            }
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err(Error::Config("--tls-cert needs --tls-key".into()));
            }
            (None, Some(_)) => {
                return Err(Error::Config("--tls-key needs --tls-cert".into()));
            }
        };
        if config.tls_handshake_timeout_secs == 0 {
            return Err(Error::Config(
                "--tls-handshake-timeout-secs must be at least 1".into(),
            ));
        }
        let certs = read_certificates(cert_path, "--tls-cert")?;
        let key = read_private_key(key_path)?;

        // ring, named explicitly: the process-wide default would depend on which crypto
        // features some other crate happened to switch on.
        let provider = Arc::new(ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
        let builder = match &config.tls_client_ca {
            None => builder.with_no_client_auth(),
            Some(ca_path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certificates(ca_path, "--tls-client-ca")? {
                    roots.add(cert).map_err(|e| {
                        Error::Config(format!(
                            "--tls-client-ca {}: not a usable CA certificate: {e}",
                            ca_path.display()
                        ))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| {
                            Error::Config(format!("--tls-client-ca {}: {e}", ca_path.display()))
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_single_cert(certs, key).map_err(|e| {
            Error::Config(format!(
                "--tls-cert {} with --tls-key {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;
        // gRPC needs h2; gRPC-Web, tus and downloads also come over HTTP/1.1 (browsers and
        // clients that offer only it), which the connection serves as well (`crate::conn`).
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            handshake_timeout: Duration::from_secs(config.tls_handshake_timeout_secs),
            mutual: config.tls_client_ca.is_some(),
        }))
    }

    /// True when clients must present a certificate signed by the configured CA.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// How long a new connection gets for its handshake and HTTP preface together.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Runs the server side of one handshake. Unbounded in time on its own: the caller gives
    /// the handshake and the HTTP preface after it one deadline (see `crate::conn`).
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }
}

/// Every certificate in a PEM file; an error unless there is at least one.
fn read_certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(path, flag)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{flag} {}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{flag} {}: no CERTIFICATE block found (PEM expected)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_file(path, "--tls-key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Error::Config(format!(
            "--tls-key {}: no usable private key (PEM with PRIVATE KEY expected): {e}",
            path.display()
        ))
    })
}

fn read_file(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))
}
