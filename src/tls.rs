//! Optional TLS, and mutual TLS, on the server's one listener (gRPC and the HTTP routes alike).
//!
//! The PEM files are read once, before the server opens its database, so that a bad certificate
//! or key stops the start with a message naming the file. Each accepted TCP connection then gets
//! its handshake in a task of its own, bounded by a deadline: a client that connects and stalls
//! is dropped when the deadline passes, and never delays another client's accept or handshake.
//! Only finished TLS streams reach tonic. This module never looks inside a request: what a
//! connection may call is decided above it.

use crate::config::Config;
use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;

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
        // gRPC needs h2; the download route is also fetched over HTTP/1.1.
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

    /// The connections of `listener`, as finished TLS streams.
    pub fn incoming(self, listener: TcpListener) -> TlsIncoming {
        TlsIncoming {
            listener,
            tls: self,
            handshakes: JoinSet::new(),
        }
    }
}

/// Accepts TCP connections and yields those whose TLS handshake finished in time.
///
/// Accepting never waits for a handshake: each runs in its own task in `handshakes`, and the
/// stream hands out whichever finishes first. Dropping the stream (when the server stops
/// accepting) closes the listener and aborts the handshakes still running.
pub struct TlsIncoming {
    listener: TcpListener,
    tls: Tls,
    handshakes: JoinSet<Option<TlsStream<TcpStream>>>,
}

impl Stream for TlsIncoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Take every connection that is waiting, so that none waits behind a handshake.
        while let Poll::Ready(accepted) = this.listener.poll_accept(cx) {
            match accepted {
                Ok((stream, peer)) => {
                    let tls = this.tls.clone();
                    this.handshakes.spawn(handshake(tls, stream, peer));
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            }
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(stream)))) => return Poll::Ready(Some(Ok(stream))),
                // Failed or too slow: already logged by the task, the socket is closed.
                Poll::Ready(Some(Ok(None))) => continue,
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "TLS handshake task ended abnormally");
                }
                // No handshake running: the listener's waker is registered above.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One handshake, bounded by the configured deadline. Dropping the TCP stream on failure closes
/// the connection.
async fn handshake(tls: Tls, stream: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed; connection closed");
            None
        }
        Err(_) => {
            tracing::debug!(
                %peer,
                timeout = ?tls.handshake_timeout,
                "TLS handshake not finished in time; connection closed"
            );
            None
        }
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
